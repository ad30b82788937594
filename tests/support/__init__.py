"""Reusable harness for tests and benchmarks: real services on 127.0.0.1 (DESIGN.md section 4).

Import what you need from :mod:`tests.support.services`; nothing here starts at import time.
"""
