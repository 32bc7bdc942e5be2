from mmtool.cli import main

main()
