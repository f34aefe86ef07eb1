"""Start the style-adapter studio: ``python app.py`` (see ``python app.py --help``)."""

import sys

from studio.environment import check_versions
from studio.errors import StudioError

if __name__ == "__main__":
    try:
        check_versions()  # before the app imports gradio and the model libraries
    except StudioError as exc:
        print(f"studio: error: {exc}", file=sys.stderr)
        sys.exit(2)
    from studio.app.server import main

    sys.exit(main())
