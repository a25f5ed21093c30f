"""``python -m pyro_compute``: the pyro-compute command line and script launcher."""
import sys

from .cli import main

sys.exit(main())
