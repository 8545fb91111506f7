"""Entry wrapper for the stage scripts: a user error is one line on stderr and exit code 2."""
import sys


def run(main):
    from hat.errors import HatError

    try:
        code = main()
    except HatError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
