"""Celery round trip through the MatCraft Redis with the application user.

Settings follow MatCraft's documented ones (broker db 0, results db 1, json,
acks late, prefetch 1). The password comes from the environment (REDIS_*),
never from the command line.

    python3 celery_probe.py worker        # a worker on the plain port
    python3 celery_probe.py send [--tls]  # tasks, a chord, a remote-control ping
"""

import os
import ssl
import sys
from urllib.parse import quote

from celery import Celery, chord
from kombu import Queue

QUEUES = ("default", "gpu_training", "high_priority", "low_priority")
TLS = "--tls" in sys.argv
HOST = os.environ["REDIS_HOST"]
AUTH = "%s:%s" % (quote(os.environ["REDIS_USER"], safe=""), quote(os.environ["REDIS_PASSWORD"], safe=""))
BASE = "rediss://%s@%s:6380" % (AUTH, HOST) if TLS else "redis://%s@%s:6379" % (AUTH, HOST)
TLS_OPTIONS = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/matcraft/pki/ca.crt"} if TLS else None

app = Celery("probe")
app.conf.update(
    broker_url=BASE + "/0",
    result_backend=BASE + "/1",
    broker_use_ssl=TLS_OPTIONS,
    redis_backend_use_ssl=TLS_OPTIONS,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_queues=[Queue(name, routing_key=name) for name in QUEUES],
    task_default_queue="default",
    task_default_routing_key="default",
)


@app.task
def add(x, y):
    return x + y


@app.task
def total(values):
    return sum(values)


def send():
    assert add.delay(2, 3).get(timeout=120) == 5
    assert add.apply_async((20, 22), queue="high_priority").get(timeout=60) == 42
    assert chord([add.s(i, i) for i in range(4)])(total.s()).get(timeout=60) == 12
    replies = app.control.ping(timeout=5)
    assert replies and all("ok" in list(r.values())[0] for r in replies), replies
    queues = app.control.inspect(timeout=5).active_queues() or {}
    assert queues and {q["name"] for q in list(queues.values())[0]} == set(QUEUES), queues
    print("round trip ok over %s, ping replies: %s" % ("TLS" if TLS else "plain", replies))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        app.worker_main(["worker", "--loglevel=info", "--concurrency=2", "-n", "probe@%h",
                         "-Q", ",".join(QUEUES)])
    else:
        send()
