from composer.evaluation.evaluate import main

main()
