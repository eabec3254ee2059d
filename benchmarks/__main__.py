"""`python -m benchmarks SUITE_DIR...`, the same as `verify bench SUITE_DIR...`."""
import sys

from benchmarks.cli import main

sys.exit(main())
