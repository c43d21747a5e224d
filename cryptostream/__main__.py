from cryptostream.cli import main

main()
