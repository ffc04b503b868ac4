"""`python -m mixllm` runs the `mixllm` command."""

from mixllm.cli import main

raise SystemExit(main())
