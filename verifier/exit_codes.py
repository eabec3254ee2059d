"""Exit codes of the `verify` command (standard library only; documented in verifier.errors)."""

EXIT_OK = 0          # a result was produced: sat, unsat, unknown or timeout
EXIT_INTERNAL = 1    # internal error
EXIT_USAGE = 2       # bad command-line usage
EXIT_MODEL = 3       # bad model
EXIT_SPEC = 4        # bad spec
EXIT_SIGINT = 130    # interrupted by SIGINT
EXIT_SIGTERM = 143   # terminated by SIGTERM
