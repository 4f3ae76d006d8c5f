"""The floor: the least a Flask app can do per request, served like Gatehouse.

`make bench` runs it under the project's gunicorn.conf.py, so worker class, worker
count and every other setting match Gatehouse's, and each Gatehouse result is
reported as a ratio to this app's throughput.
"""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def hello():
    return jsonify(status="ok")
