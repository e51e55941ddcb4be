"""`python -m unsampling_lab sweep ...`: see `unsampling_lab.lab.cli`."""
from .lab.cli import main

raise SystemExit(main())
