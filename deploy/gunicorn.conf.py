"""gunicorn settings for a Starkeep sync server behind the buffering nginx of ``deploy/nginx/starkeep.conf``.

    gunicorn -c deploy/gunicorn.conf.py your_project.wsgi

Sync workers handle one request at a time and block while they read it. On
their own, a client that sends its headers or body slowly holds a worker for as
long as it likes, and a handful of such clients stop the service. Behind nginx
with request and response buffering, a worker only ever sees a whole request,
read from loopback at memory speed, and hands its whole answer to nginx at once.
So this file assumes that proxy and only listens where the proxy can reach it.

Settings given on the command line win over this file (``-b``, ``-w``, ...).
Environment: ``STARKEEP_BIND`` (default ``127.0.0.1:8000``), ``WEB_CONCURRENCY``
(workers, default 4), ``STARKEEP_WORKER_TIMEOUT`` (seconds, default 120).
"""

from __future__ import annotations

import os

# Loopback (or ``unix:/run/starkeep/gunicorn.sock``) only: a sync worker reachable
# directly from the network is exactly what slow clients exploit.
bind = [os.environ.get("STARKEEP_BIND", "127.0.0.1:8000")]

# Sync workers: behind a buffering proxy each request costs a worker only its
# own processing time, and a worker keeps no state between requests. Requests
# are CPU- and database-bound, so about one or two workers per core.
worker_class = "sync"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))

# A sync worker that is silent for this long is killed and replaced. It must
# exceed the longest legitimate request: with file-system blobs, a 5 GiB upload
# (MAX_BLOB_BYTES) is read from nginx, hashed and written by the worker, about
# 43 MB/s over 120 s. Lower it with MAX_BLOB_BYTES, or when blobs go to S3
# through presigned URLs and never pass through a worker.
timeout = int(os.environ.get("STARKEEP_WORKER_TIMEOUT", "120"))

# On reload or shutdown, requests in flight get this long to finish. Exchanges
# take milliseconds; this mostly lets an upload that is nearly done complete.
graceful_timeout = 30

# Sync workers close the connection after every response whatever this says;
# it applies if the worker class is switched to gthread. It is longer than the
# proxy's upstream keepalive_timeout (4 s), so nginx always drops an idle
# connection first and never sends a request on one gunicorn is closing.
keepalive = 5

# The same bounds as nginx's large_client_header_buffers (4 x 8k): a request
# line or header that nginx accepted is never refused here, and one that reaches
# gunicorn directly cannot be larger. 8190 is gunicorn's maximum; an object key
# is at most 1,024 bytes in UTF-8, so at most 3,072 characters once percent-encoded.
limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 100

# Only the proxy on this host may set the forwarding headers; on a unix socket
# gunicorn trusts the peer anyway. The one scheme header nginx sets is the only
# one honoured: the defaults also accept X-Forwarded-Ssl and
# X-Forwarded-Protocol, which nginx would pass through from the client.
forwarded_allow_ips = "127.0.0.1,::1"
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}

# The peer is always nginx, so the access log shows the client's address from
# X-Forwarded-For (which nginx sets to it, not appends to).
accesslog = "-"
access_log_format = '%({x-forwarded-for}i)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
