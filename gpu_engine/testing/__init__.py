"""Test helpers that ship with the package (loopback fake exchange for the live recorder).

Nothing here talks to a real exchange: every server binds to 127.0.0.1.
"""
