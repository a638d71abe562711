from cir_lightning.cli import main

main()
