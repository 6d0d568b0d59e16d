from edgesplit.cli import main

main()
