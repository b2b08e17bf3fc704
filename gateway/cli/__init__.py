"""The ``callgate`` command: ``main`` (serve and the operator's tools), ``persist``
(persist, export-cdrs, rebuild, audit), ``notify``, the ``supervisor`` of the children that
serve starts, the ``demo`` tenant of ``make run`` and a ``progress`` bar.

The top layer: it may import everything, nothing imports it.
"""
