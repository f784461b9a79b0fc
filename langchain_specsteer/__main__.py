"""`python -m langchain_specsteer demo` runs the `specsteer` command line."""

from langchain_specsteer.cli import main

raise SystemExit(main())
