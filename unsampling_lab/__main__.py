"""`python -m unsampling_lab sweep ...`: see `unsampling_lab.lab.cli`."""
try:
    from .lab.cli import main
except KeyboardInterrupt:  # Ctrl-C between the package's import and main(): as main() answers it
    import sys

    print("unsampling-lab: interrupted while starting; nothing was run", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
