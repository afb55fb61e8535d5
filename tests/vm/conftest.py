"""Guest-test options (see guest_helpers.py: these tests run inside the guest VM only)."""

from __future__ import annotations

import os

import pytest

# The 1 GiB the issue names cost too much under software emulation; the rig passes what it
# measured as affordable (see tools/vm/__main__.py), overridable for a long run.
DEFAULT_MIX_BYTES = 1 << 30


@pytest.fixture
def vm_mix_bytes() -> int:
    return int(os.environ.get("AIOZC_VM_MIX_BYTES", DEFAULT_MIX_BYTES))
