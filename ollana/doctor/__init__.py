"""``ollana doctor``: why this node sees what it sees.

``collect`` and ``listen`` gather facts (the only I/O); ``firewall`` reads rule sets and
``analyze`` turns facts into findings, each with the exact fix; both are pure.
"""
