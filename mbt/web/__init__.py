"""The peer's web page: the console's actions in a browser, with live progress.

:mod:`mbt.web.server` builds the twisted.web ``Site`` for a
:class:`~mbt.peer.node.PeerNode`; :mod:`mbt.web.resources` holds the routes,
:mod:`mbt.web.events` the server-sent event channel, :mod:`mbt.web.sessions`
browser sessions and CSRF tokens, :mod:`mbt.web.views` the pure functions that
turn the node's state into JSON. Every action calls the same node methods as
the console; no rule is implemented twice.
"""
