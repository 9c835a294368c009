/*
 * eval.c - frost eval: the loss and accuracy of a model's weights (--init)
 * on the test set, set up as frost train is (setup.c) without the training.
 */
#include "setup.h"

#include <stdio.h>

int frost_eval(const frost_options *opts, fr_error *err) {
    run_state run = {.opts = opts};
    int rc = set_up_run(&run, false, err);
    double loss = 0.0, accuracy = 0.0;
    if (rc == FR_OK)
        rc = evaluate_dataset(run.trainer, run.test, opts->batch_size, run.x, run.labels, &loss,
                              &accuracy, err);
    if (rc == FR_OK && is_root())
        printf("test: loss %.4f accuracy %.2f%% (%d samples)\n", loss, 100.0 * accuracy,
               fr_dataset_size(run.test));
    free_run(&run);
    return rc;
}
