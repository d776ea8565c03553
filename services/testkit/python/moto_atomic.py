"""moto_server with SQS's ReceiveMessage, SendMessage and DeleteMessage and S3's
conditional PutObject atomic, as AWS's are.

``moto_server`` serves each request on its own thread, and moto 5.x changes a queue's
messages with no lock held across the change:
- ``SQSBackend.receive_message`` checks ``message.visible`` and then calls
  ``message.mark_received``: two consumers polling at once can both receive the same
  message, each with its own receipt handle (seen as two final results for one job when two
  controllers share a queue);
- ``Queue.delete_message`` builds the list of the messages it keeps and then replaces the
  queue's list with it: two deletes at once can each keep the message the other deleted
  (the one written last brings it back, in flight until its visibility timeout ends, then
  received again: seen as a dead letter with ``maxReceiveCount`` 1), and a message sent
  meanwhile can be appended to the list being replaced (lost).
Real SQS does neither. This wrapper serializes receive's pick-and-mark, ``add_message`` and
``delete_message`` under the queue's lock; a long poll waits outside it (on the queue's
own condition, as moto does), then picks again under the lock.

S3's conditional ``PutObject`` (``If-None-Match: *``, ``If-Match``) has the same gap in
moto: ``S3Response.put_object`` checks the condition, then writes. Two conditional writes
of one key at once could both pass (seen as two gallery publishers both winning the race
for ``current``); real S3 lets one through. Every ``put_object`` runs under one lock.

Two variables make races likelier, for the tests that show these locks are needed:
``PLUGWORKER_MOTO_SWITCH_INTERVAL`` (seconds between Python's thread switches) and
``PLUGWORKER_MOTO_S3_READ_DELAY`` (seconds each read of an S3 object is held after it is
made).

With ``--address-file PATH`` (tests start it on ``-p 0``), once listening it writes
``{"http": "127.0.0.1:PORT"}`` to PATH.tmp and renames it to PATH, as plugworker's
processes do, so a test learns the port the kernel gave it.

Usage: python moto_atomic.py [--address-file PATH] [moto_server's arguments]
"""

import json
import os
import sys
import threading
import time

import moto.server
from moto.core.utils import unix_time
from moto.s3.models import S3Backend
from moto.s3.responses import S3Response
from moto.sqs.models import Queue, SQSBackend
from werkzeug.serving import make_server


def _lock_of(queue):
    """The queue's own lock, made on first use (dict.setdefault is atomic).

    One per queue, not one for all: a send to the results queue does not wait for a
    receive on the jobs queue. A receive moving a message to its dead-letter queue takes
    that queue's lock inside its own; nothing takes them the other way round.
    """
    return queue.__dict__.setdefault("_plugworker_lock", threading.RLock())


def _holding_its_lock(change):
    def locked(queue, *args, **kwargs):
        with _lock_of(queue):
            return change(queue, *args, **kwargs)

    return locked


Queue.add_message = _holding_its_lock(Queue.add_message)
Queue.delete_message = _holding_its_lock(Queue.delete_message)

_s3_writes = threading.Lock()
_put_object = S3Response.put_object


def put_object(self):
    with _s3_writes:
        return _put_object(self)


S3Response.put_object = put_object


def is_message_valid_based_on_retention_period(self, queue_name, message):
    """moto's check, reading the one attribute it needs: moto's computes all of the
    queue's attributes, which counts its messages, for each message received (a receive
    of 10 from a queue of 400 took 0.2 s, all of it under the queue's lock here)."""
    retention = int(self.get_queue(queue_name).message_retention_period)
    return retention + message.sent_timestamp / 1000 > unix_time()


SQSBackend.is_message_valid_based_on_retention_period = (
    is_message_valid_based_on_retention_period
)

_receive = SQSBackend.receive_message


def receive_message(self, queue_name, count, wait_seconds_timeout, visibility_timeout,
                    message_attribute_names=None):
    polling_end = time.monotonic() + wait_seconds_timeout
    while True:
        with _lock_of(self.get_queue(queue_name)):
            # One pass, no wait: moto picks and marks the visible messages.
            result = _receive(self, queue_name, count, 0, visibility_timeout,
                              message_attribute_names)
        left = polling_end - time.monotonic()
        if result or left <= 0:
            return result
        # Woken when a message is sent; at most 1 s, as moto's own loop (a message whose
        # visibility timeout ends sends no notification).
        self.get_queue(queue_name).wait_for_messages(min(1.0, left))


SQSBackend.receive_message = receive_message


def serving_reporting(address_file):
    """moto's run_simple, reporting the bound port in address_file."""

    def run(host, port, app, threaded, request_handler, ssl_context=None, **_):
        server = make_server(host, port, app, threaded=threaded,
                             request_handler=request_handler, ssl_context=ssl_context)
        # What moto_server sets from -p, for the services that build URLs from it.
        os.environ["MOTO_PORT"] = str(server.port)
        partial = address_file + ".tmp"
        with open(partial, "w") as out:
            json.dump({"http": f"{host}:{server.port}"}, out)
        os.rename(partial, address_file)
        server.serve_forever()

    return run


if __name__ == "__main__":
    # Tests set it to make thread switches (and so races between requests) frequent.
    if "PLUGWORKER_MOTO_SWITCH_INTERVAL" in os.environ:
        sys.setswitchinterval(float(os.environ["PLUGWORKER_MOTO_SWITCH_INTERVAL"]))
    # Tests set it to widen the gap between a conditional write's check and its write.
    if "PLUGWORKER_MOTO_S3_READ_DELAY" in os.environ:
        _read_delay = float(os.environ["PLUGWORKER_MOTO_S3_READ_DELAY"])
        _get_object = S3Backend.get_object

        def slow_get_object(*args, **kwargs):
            found = _get_object(*args, **kwargs)
            time.sleep(_read_delay)
            return found

        S3Backend.get_object = slow_get_object
    args = sys.argv[1:]
    if "--address-file" in args:
        at = args.index("--address-file")
        moto.server.run_simple = serving_reporting(args[at + 1])
        del args[at:at + 2]
    moto.server.main(args)
