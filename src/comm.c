/*
 * comm.c - everything frost asks of MPI, and the single-process fallback.
 *
 * The rest of the library sees sums, broadcasts and agreement; MPI appears
 * only here.  The gradient allreduce runs in place on the reduced slab, so the
 * bytes on the wire are the trainable gradients and nothing else.  Failures
 * are made collective (fr_comm_agree) so one rank's bad file ends every rank
 * with that rank's message instead of leaving the others in a collective.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "config.h"
#include "internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_MPI
#include <mpi.h>

static int world_rank, world_size = 1;
static bool initialised_here;

int fr_comm_init(int *argc, char ***argv, fr_error *err) {
    int already = 0, provided = 0;
    MPI_Initialized(&already);
    if (!already) {
        /* Open MPI's nonblocking allreduce (libnbc) picks a binomial tree for
         * few ranks, which costs twice the blocking allreduce on large
         * buckets (11.6 MB, 2 ranks, shared memory: 4.0 ms vs 2.0 ms); its
         * ring is as fast as the blocking one.  A user's setting wins, and
         * other MPIs ignore the variable. */
        setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0);
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return fr_fail(err, FR_ECOMM, "MPI_Init_thread failed");
        initialised_here = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    return FR_OK;
}

void fr_comm_finalize(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (initialised_here && !finalized)
        MPI_Finalize();
    initialised_here = false;
}

bool fr_comm_have_mpi(void) { return true; }
int fr_comm_rank(void) { return world_rank; }
int fr_comm_size(void) { return world_size; }

static int mpi_failed(fr_error *err, const char *what, int code) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(code, text, &len);
    return fr_fail(err, FR_ECOMM, "%s failed: %s", what, text);
}

int fr_comm_agree(int status, fr_error *err) {
    if (world_size == 1)
        return status;
    int mine = status != FR_OK ? world_rank : world_size, first_failed = world_size;
    int rc = MPI_Allreduce(&mine, &first_failed, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return mpi_failed(err, "MPI_Allreduce", rc);
    if (first_failed == world_size)
        return FR_OK;
    fr_error shared = {0};
    if (world_rank == first_failed && err)
        shared = *err;
    shared.status = world_rank == first_failed ? status : 0;
    MPI_Bcast(&shared, (int)sizeof shared, MPI_BYTE, first_failed, MPI_COMM_WORLD);
    if (err) {
        *err = shared;
        /* Say which rank it was unless it was rank 0 speaking for itself. */
        if (first_failed != 0)
            fr_error_prefix(err, "rank %d: ", first_failed);
    }
    return shared.status;
}

int fr_comm_check_same(uint64_t value, const char *what, fr_error *err) {
    if (world_size == 1)
        return FR_OK;
    uint64_t *all = malloc((size_t)world_size * sizeof *all);
    if (!all)
        return fr_fail(err, FR_ENOMEM, "out of memory comparing ranks");
    int rc = MPI_Allgather(&value, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) {
        free(all);
        return mpi_failed(err, "MPI_Allgather", rc);
    }
    int differing = -1;
    for (int r = 1; r < world_size && differing < 0; r++)
        if (all[r] != all[0])
            differing = r;
    free(all);
    if (differing < 0)
        return FR_OK;
    return fr_fail(err, FR_ECOMM, "ranks disagree on %s (rank 0 and rank %d differ); every rank must run the same command",
                   what, differing);
}

int fr_comm_node_peers(const void *key, size_t len, int *index, int *count, fr_error *err) {
    *index = 0;
    *count = 1;
    if (world_size == 1)
        return FR_OK;
    MPI_Comm node;
    int rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL,
                                 &node);
    if (rc != MPI_SUCCESS)
        return mpi_failed(err, "MPI_Comm_split_type", rc);
    int node_rank = 0, node_size = 1, failed = 0, any_failed = 0;
    MPI_Comm_rank(node, &node_rank);
    MPI_Comm_size(node, &node_size);
    unsigned char *all = malloc(len * (size_t)node_size);
    /* Every rank of the node must reach the same collectives, so an
     * allocation failure is agreed on before the gather. */
    failed = all == NULL;
    rc = MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, node);
    if (rc == MPI_SUCCESS && !any_failed)
        rc = MPI_Allgather(key, (int)len, MPI_BYTE, all, (int)len, MPI_BYTE, node);
    MPI_Comm_free(&node);
    if (rc == MPI_SUCCESS && !any_failed)
        for (int r = 0; r < node_size; r++)
            if (memcmp(all + (size_t)r * len, key, len) == 0) {
                if (r < node_rank)
                    (*index)++;
                if (r != node_rank)
                    (*count)++;
            }
    free(all);
    if (rc != MPI_SUCCESS)
        return mpi_failed(err, "MPI_Allgather", rc);
    if (any_failed)
        return fr_fail(err, FR_ENOMEM, "out of memory comparing the ranks of a node");
    return FR_OK;
}

bool fr_comm_any(bool flag) {
    if (world_size == 1)
        return flag;
    int mine = flag, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any != 0;
}

int fr_comm_allreduce_floats(float *buf, size_t count, fr_error *err) {
    if (world_size == 1 || count == 0)
        return FR_OK;
    /* MPI counts are int: large slabs go in pieces. */
    const size_t piece = (size_t)1 << 30;
    for (size_t done = 0; done < count; done += piece) {
        int n = (int)(count - done < piece ? count - done : piece);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + done, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return mpi_failed(err, "MPI_Allreduce", rc);
    }
    return FR_OK;
}

/* Requests of the step's bucket allreduces, indexed by ticket. */
static MPI_Request *pending;
static int pending_cap;

int fr_comm_start_sum(float *buf, size_t count, int ticket, fr_error *err) {
    if (ticket >= pending_cap) {
        int cap = ticket + 16;
        MPI_Request *grown = realloc(pending, (size_t)cap * sizeof *grown);
        if (!grown)
            return fr_fail(err, FR_ENOMEM, "out of memory for allreduce requests");
        for (int i = pending_cap; i < cap; i++)
            grown[i] = MPI_REQUEST_NULL;
        pending = grown;
        pending_cap = cap;
    }
    if (count > (size_t)INT_MAX)
        return fr_fail(err, FR_ECOMM, "an allreduce bucket of %zu floats is too large", count);
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                            &pending[ticket]);
    if (rc != MPI_SUCCESS)
        return mpi_failed(err, "MPI_Iallreduce", rc);
    /* Give the earlier buckets a chance to progress while backward goes on. */
    for (int i = 0; i < ticket; i++) {
        int done = 0;
        if (pending[i] != MPI_REQUEST_NULL)
            MPI_Test(&pending[i], &done, MPI_STATUS_IGNORE);
    }
    return FR_OK;
}

int fr_comm_finish_sum(int ticket, fr_error *err) {
    if (ticket >= pending_cap || pending[ticket] == MPI_REQUEST_NULL)
        return FR_OK;
    int rc = MPI_Wait(&pending[ticket], MPI_STATUS_IGNORE);
    return rc == MPI_SUCCESS ? FR_OK : mpi_failed(err, "MPI_Iallreduce", rc);
}

int fr_comm_allreduce_doubles(double *buf, int count, fr_error *err) {
    if (world_size == 1)
        return FR_OK;
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? FR_OK : mpi_failed(err, "MPI_Allreduce", rc);
}

int fr_comm_broadcast_floats(float *buf, size_t count, fr_error *err) {
    if (world_size == 1)
        return FR_OK;
    const size_t piece = (size_t)1 << 30;
    for (size_t done = 0; done < count; done += piece) {
        int n = (int)(count - done < piece ? count - done : piece);
        int rc = MPI_Bcast(buf + done, n, MPI_FLOAT, 0, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return mpi_failed(err, "MPI_Bcast", rc);
    }
    return FR_OK;
}

#else /* a single process */

/* Launchers export their world size; several ranks of a build without MPI
 * would each train alone and write the same files. */
static int launcher_world_size(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 1)
            return atoi(v);
    }
    return 1;
}

int fr_comm_init(int *argc, char ***argv, fr_error *err) {
    (void)argc;
    (void)argv;
    int launched = launcher_world_size();
    if (launched > 1)
        return fr_fail(err, FR_ECOMM,
                       "this frost was built without MPI (--without-mpi) but was started as %d ranks; rebuild with Open MPI or run one process",
                       launched);
    return FR_OK;
}

void fr_comm_finalize(void) {}
bool fr_comm_any(bool flag) { return flag; }
int fr_comm_node_peers(const void *key, size_t len, int *index, int *count, fr_error *err) {
    (void)key;
    (void)len;
    (void)err;
    *index = 0;
    *count = 1;
    return FR_OK;
}
bool fr_comm_have_mpi(void) { return false; }
int fr_comm_rank(void) { return 0; }
int fr_comm_size(void) { return 1; }
int fr_comm_agree(int status, fr_error *err) {
    (void)err;
    return status;
}
int fr_comm_check_same(uint64_t value, const char *what, fr_error *err) {
    (void)value;
    (void)what;
    (void)err;
    return FR_OK;
}
int fr_comm_allreduce_floats(float *buf, size_t count, fr_error *err) {
    (void)buf;
    (void)count;
    (void)err;
    return FR_OK;
}
int fr_comm_allreduce_doubles(double *buf, int count, fr_error *err) {
    (void)buf;
    (void)count;
    (void)err;
    return FR_OK;
}
int fr_comm_start_sum(float *buf, size_t count, int ticket, fr_error *err) {
    (void)buf;
    (void)count;
    (void)ticket;
    (void)err;
    return FR_OK;
}
int fr_comm_finish_sum(int ticket, fr_error *err) {
    (void)ticket;
    (void)err;
    return FR_OK;
}
int fr_comm_broadcast_floats(float *buf, size_t count, fr_error *err) {
    (void)buf;
    (void)count;
    (void)err;
    return FR_OK;
}
#endif

/* ------------------------------------------------- fingerprints (any build) */

static uint64_t hash_text(uint64_t hash, const char *text) {
    return fr_hash_bytes(hash, text, strlen(text) + 1);
}

int fr_comm_check_run(const fr_model *model, const fr_train_config *config,
                      const double *settings, int setting_count, long dataset_size,
                      fr_error *err) {
    uint64_t shapes = FR_HASH_INIT, frozen = FR_HASH_INIT, hyper = FR_HASH_INIT;
    for (int i = 0; i < model->param_count; i++) {
        const fr_param *p = &model->params[i];
        shapes = hash_text(shapes, p->name);
        shapes = fr_hash_bytes(shapes, p->shape, sizeof(int) * (size_t)p->ndim);
        frozen = fr_hash_bytes(frozen, &p->requires_grad, sizeof p->requires_grad);
    }
    double optimizer[] = {config->optimizer, config->loss, config->lr, config->momentum,
                          config->dampening, config->nesterov, config->weight_decay,
                          config->beta1, config->beta2, config->eps, config->bucket_mb};
    hyper = fr_hash_bytes(hyper, optimizer, sizeof optimizer);
    hyper = fr_hash_bytes(hyper, settings, sizeof(double) * (size_t)setting_count);
    int rc = fr_comm_check_same(shapes, "the model (parameter names and shapes)", err);
    if (rc == FR_OK)
        rc = fr_comm_check_same(frozen, "the frozen set (--freeze/--unfreeze)", err);
    if (rc == FR_OK)
        rc = fr_comm_check_same(hyper, "the hyper-parameters and run settings", err);
    if (rc == FR_OK)
        rc = fr_comm_check_same((uint64_t)dataset_size, "the dataset size", err);
    return rc;
}

int fr_comm_broadcast_model(fr_model *model, fr_error *err) {
    int rc = fr_model_ensure_arena(model, err);
    if (rc == FR_OK)
        rc = fr_comm_broadcast_floats(model->arena, model->arena_floats, err);
    return rc;
}
