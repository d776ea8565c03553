"""moto_server with SQS's ReceiveMessage atomic, as real SQS's is.

moto 5.x's ``SQSBackend.receive_message`` checks ``message.visible`` and then calls
``message.mark_received`` with no lock, while ``moto_server`` serves each request on its
own thread: two consumers polling at once can both receive the same message, each with its
own receipt handle (seen as two final results for one job when two controllers share a
queue). Real SQS never hands one visible message to two receivers within its visibility
timeout. This wrapper serializes the pick-and-mark under one lock; a long poll waits outside
it (on the queue's own condition, as moto does), then picks again under the lock.

Usage: python moto_sqs_atomic.py [moto_server's arguments]
"""

import sys
import threading
import time

from moto.server import main
from moto.sqs.models import SQSBackend

_pick = threading.Lock()
_receive = SQSBackend.receive_message


def receive_message(self, queue_name, count, wait_seconds_timeout, visibility_timeout,
                    message_attribute_names=None):
    polling_end = time.monotonic() + wait_seconds_timeout
    while True:
        with _pick:
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

if __name__ == "__main__":
    main(sys.argv[1:])
