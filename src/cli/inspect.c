/*
 * inspect.c - frost inspect: the model's parameters as it would train them
 * (name, shape, count, trainable or frozen), its tied names and buffers, and
 * the totals; built by setup.c's load_model, so the flags mean what they
 * mean to frost train.
 */
#include "setup.h"

#include <stdio.h>

int frost_inspect(const frost_options *opts, fr_error *err) {
    fr_model *model = NULL;
    int rc = fr_comm_agree(load_model(opts, &model, err), err);
    if (rc != FR_OK)
        return rc;
    if (is_root()) {
        for (size_t i = 0; i < fr_model_param_count(model); i++) {
            fr_param *p = fr_model_param(model, i);
            char shape[96];
            fr_param_shape_string(p, shape, sizeof shape);
            printf("%s %s %zu %s\n", fr_param_name(p), shape, fr_param_numel(p),
                   fr_param_requires_grad(p) ? "trainable" : "frozen");
        }
        /* Tied parameters once, as named_parameters() lists them; then the
         * other names they have. */
        for (size_t i = 0; i < fr_model_param_count(model); i++) {
            char names[512];
            if (fr_model_tied_names(model, i, names, sizeof names) > 0)
                printf("# %s is %s (tied: one parameter, frozen or trained together, its "
                       "gradients added)\n", names, fr_param_name(fr_model_param(model, i)));
        }
        /* Buffers after the parameters, the state word `buffer`. */
        for (size_t i = 0; i < fr_model_buffer_count(model); i++) {
            char shape[32];
            fr_model_buffer_shape_string(model, i, shape, sizeof shape);
            printf("%s %s %zu buffer\n", fr_model_buffer_name(model, i), shape,
                   fr_model_buffer_numel(model, i));
        }
        size_t total = fr_model_numel(model), trainable = fr_model_trainable_numel(model);
        printf("total parameters: %zu\n", total);
        printf("trainable parameters: %zu (%.2f%%)\n", trainable,
               total ? 100.0 * trainable / total : 0.0);
        printf("frozen parameters: %zu\n", total - trainable);
        printf("allreduce bytes per step: %zu\n", trainable * sizeof(float));
    }
    fr_model_free(model);
    return FR_OK;
}
