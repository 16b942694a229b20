"""Run a Shoal service whose ZeroMQ sockets have 64 KiB kernel buffers:
``python -m tests.small_buffers MODULE FLAGS...``.

A test that needs blob batches to stay queued inside a segmenter cannot rely on the kernel's
defaults: a loopback receive buffer grows up to ``net.ipv4.tcp_rmem``'s maximum (32 MiB on some
machines), room for a whole backlog of batches, which then survive their segmenter's death.
"""

from __future__ import annotations

import runpy
import sys

import zmq

import shoal.transport

BUFFER_BYTES = 1 << 16
_make_socket = shoal.transport.make_socket


def _small_buffers(*args, **kwargs) -> zmq.Socket:
    sock = _make_socket(*args, **kwargs)
    sock.setsockopt(zmq.SNDBUF, BUFFER_BYTES)
    sock.setsockopt(zmq.RCVBUF, BUFFER_BYTES)
    return sock


if __name__ == "__main__":
    shoal.transport.make_socket = _small_buffers  # before the service imports it
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
