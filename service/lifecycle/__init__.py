"""Process lifecycle under gunicorn: graceful shutdown, the custom gevent worker, crash logs.

The gunicorn master imports this package (for the worker class and the signal
handlers) before it forks, so no module here may import redis, pymysql or anything
else that opens sockets or creates locks at import time.
"""
