/*
 * optim.c - PyTorch's update rules, one parameter at a time.
 *
 * The trainer calls fr_optim_update for each trainable parameter (or a piece
 * of one) with its gradient from the reduced slab and its state, which lives
 * in arrays laid out like the slab: frozen parameters have none.  The rules
 * follow torch.optim's single-tensor implementations (1.13):
 *   SGD:   g += wd*p; buf = g on the first step, else buf = mu*buf + (1-damp)*g;
 *          g = nesterov ? g + mu*buf : buf; p -= lr*g
 *   Adam:  g += wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
 *          p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 *   AdamW: p *= 1 - lr*wd, then Adam without the wd term.
 */
#include "internal.h"

#include <math.h>

void fr_train_config_default(fr_train_config *config) {
    *config = (fr_train_config){
        .optimizer = FR_SGD,
        .loss = FR_CROSS_ENTROPY,
        .lr = 0.01,
        .beta1 = 0.9,
        .beta2 = 0.999,
        .eps = 1e-8,
        .max_batch = 64,
    };
}

int fr_optim_state_per_value(const fr_train_config *config) {
    if (config->optimizer == FR_SGD)
        return config->momentum != 0.0 ? 1 : 0;
    return 2;
}

int fr_optim_check(const fr_train_config *c, fr_error *err) {
    if (c->grad_dtype != FR_GRAD_F32 && c->grad_dtype != FR_GRAD_BF16)
        return fr_fail(err, FR_EINVAL, "gradient dtype %d: expected float32 or bfloat16",
                       (int)c->grad_dtype);
    if (!(c->lr >= 0.0) || !isfinite(c->lr))
        return fr_fail(err, FR_EINVAL, "learning rate %g: must be a finite number >= 0", c->lr);
    if (!(c->momentum >= 0.0) || !isfinite(c->momentum))
        return fr_fail(err, FR_EINVAL, "momentum %g: must be a finite number >= 0", c->momentum);
    if (!(c->weight_decay >= 0.0) || !isfinite(c->weight_decay))
        return fr_fail(err, FR_EINVAL, "weight decay %g: must be a finite number >= 0", c->weight_decay);
    if (c->nesterov && (c->momentum <= 0.0 || c->dampening != 0.0))
        return fr_fail(err, FR_EINVAL, "nesterov momentum needs a momentum > 0 and zero dampening");
    if (!(c->beta1 >= 0.0 && c->beta1 < 1.0) || !(c->beta2 >= 0.0 && c->beta2 < 1.0))
        return fr_fail(err, FR_EINVAL, "Adam betas must be in [0, 1)");
    if (!(c->eps >= 0.0))
        return fr_fail(err, FR_EINVAL, "Adam eps must be >= 0");
    if (c->optimizer != FR_SGD && c->optimizer != FR_ADAM && c->optimizer != FR_ADAMW)
        return fr_fail(err, FR_EINVAL, "unknown optimizer %d", (int)c->optimizer);
    if (!(c->clip_grad_norm >= 0.0) || !isfinite(c->clip_grad_norm))
        return fr_fail(err, FR_EINVAL,
                       "gradient clipping norm %g: must be a finite number > 0 (0: no clipping)",
                       c->clip_grad_norm);
    return fr_lr_schedule_check(&c->lr_schedule, err);
}

static void sgd(const fr_train_config *c, long step, float *p, const float *grad, float *buf,
                size_t n) {
    const float lr = (float)c->lr, wd = (float)c->weight_decay, mu = (float)c->momentum;
    const float keep = (float)(1.0 - c->dampening);
    /* The common cases get loops without branches, so they vectorize;
     * wd = 0 adds an exact 0 and changes nothing. */
    if (!buf) {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            p[i] -= lr * (grad[i] + wd * p[i]);
        return;
    }
    if (step == 1) {
        /* torch creates the buffer as a copy of the first gradient. */
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            buf[i] = grad[i] + wd * p[i];
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            buf[i] = mu * buf[i] + keep * (grad[i] + wd * p[i]);
    }
    if (c->nesterov) {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            p[i] -= lr * (grad[i] + wd * p[i] + mu * buf[i]);
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            p[i] -= lr * buf[i];
    }
}

static void adam(const fr_train_config *c, long step, float *p, const float *grad, float *m,
                 float *v, size_t n) {
    const float lr = (float)c->lr, wd = (float)c->weight_decay;
    const float b1 = (float)c->beta1, b2 = (float)c->beta2, eps = (float)c->eps;
    /* torch forms 1 - beta and 1 - lr*wd in double before they meet float
     * tensors; 1.0f - 0.999f would be 1.3e-5 off and bias every step. */
    const float one_minus_b1 = (float)(1.0 - c->beta1), one_minus_b2 = (float)(1.0 - c->beta2);
    const float decay = (float)(1.0 - c->lr * c->weight_decay);
    const bool decoupled = c->optimizer == FR_ADAMW;
    const float correction1 = 1.0f - (float)pow(c->beta1, (double)step);
    const float correction2_sqrt = (float)sqrt(1.0 - pow(c->beta2, (double)step));
    const float step_size = lr / correction1;
    /* One loop per rule, without a branch inside, so that it vectorizes
     * (sqrt and division are exact per lane: the same bits as one at a
     * time); Adam with wd = 0 adds an exact 0 and changes nothing. */
    if (decoupled) {
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            float g = grad[i];
            p[i] *= decay;
            m[i] = b1 * m[i] + one_minus_b1 * g;
            v[i] = b2 * v[i] + one_minus_b2 * g * g;
            float denom = sqrtf(v[i]) / correction2_sqrt + eps;
            p[i] -= step_size * (m[i] / denom);
        }
        return;
    }
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] + wd * p[i];
        m[i] = b1 * m[i] + one_minus_b1 * g;
        v[i] = b2 * v[i] + one_minus_b2 * g * g;
        float denom = sqrtf(v[i]) / correction2_sqrt + eps;
        p[i] -= step_size * (m[i] / denom);
    }
}

void fr_optim_update(const fr_train_config *config, long step, float *param, const float *grad,
                     float *m, float *v, size_t n) {
    if (config->optimizer == FR_SGD)
        sgd(config, step, param, grad, m, n);
    else
        adam(config, step, param, grad, m, v, n);
}
