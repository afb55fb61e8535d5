"""The kernel's side: ABI definitions (cffi), system-call wrappers and the optional compiled core.

Nothing here imports the rest of aiozc; everything else may import from here.
"""
