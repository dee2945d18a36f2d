"""libp2p plumbing shared by the node and by light clients (never imports ``node``).

* ``wire``: our request/response framing (a length prefix whose cap is checked before the
  payload is read; the response adds one status byte). No libp2p import.
* ``host``: the one place that imports libp2p for both sides: the import guard, logging fixes,
  node keys and peer ids, multiaddr parsing, the client half of a request, and
  :class:`~deltachain.p2p.host.ClientHost`, a dial-only host on its own trio thread with a
  blocking API (what a light client needs; the node's gossip host stays in ``node/network.py``).
"""
