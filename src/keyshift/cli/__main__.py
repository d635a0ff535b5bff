"""`python -m keyshift.cli ...`, as the crash tests run the CLI in a process of its own."""

from keyshift.cli import main

main()
