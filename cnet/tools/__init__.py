"""Command-line tools, each a ``python -m cnet.tools.<name>`` entry (see the README)."""
