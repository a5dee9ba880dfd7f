"""Templates of the files a remote-code output carries (``modeling_steered.py``)."""
