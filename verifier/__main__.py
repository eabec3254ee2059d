"""`python -m verifier net.onnx spec.vnnlib ...` (the same as the `verify` command)."""
import sys

from verifier.cli import main

sys.exit(main())
