"""``python -m rdloss``: the same as the ``rdloss`` command."""

from rdloss.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
