"""`python -m image_cloner` is the same as the `image-cloner` command."""

from image_cloner.cli import main

raise SystemExit(main())
