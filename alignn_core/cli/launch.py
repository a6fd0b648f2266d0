"""The ``alignn`` console script: apply the memory-allocator policy, then run the CLI.

Kept apart from ``app.py`` (which imports torch through its commands) because PyTorch reads its
transparent-huge-page switch once, at its first allocation: the policy (``ALIGNN_MALLOC``,
:mod:`alignn_core.allocator`) must be in place before anything imports torch.
"""

from __future__ import annotations

import sys


def entry() -> None:
    """``alignn``: exit 2 with one line for a bad ``ALIGNN_MALLOC``, else run the CLI."""
    from alignn_core.allocator import AllocatorPolicyError, apply_policy, policy_from_env

    try:
        policy = policy_from_env()
    except AllocatorPolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    apply_policy(policy)
    from alignn_core.cli.app import entry as run_cli

    run_cli()
