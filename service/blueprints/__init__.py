"""HTTP routes: thin views that parse, call a service function and shape the response."""
