"""`python -m unsampling_lab sweep ...`: see `unsampling_lab.cli`."""
from .cli import main

raise SystemExit(main())
