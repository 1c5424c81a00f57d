from fea20k.cli import main


main()
