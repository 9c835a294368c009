/*
 * comm.c - everything frost asks of MPI outside the gradient allreduce, and
 * the single-process fallback.
 *
 * The rest of the library sees sums, broadcasts and agreement; MPI appears
 * only here and in allreduce.c (the gradients' own ring, on its own
 * communicator).  Failures are made collective (fr_comm_agree) so one rank's
 * bad file ends every rank with that rank's message instead of leaving the
 * others in a collective.  Every collective is started nonblocking and waited
 * for with a timeout (fr_comm_wait), so a rank or link that dies ends the job
 * with a message instead of a hang.
 */
#define _GNU_SOURCE /* cpu_set_t, sched_getaffinity; nanosleep */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef HAVE_MPI
#include <mpi.h>
#define FR_HAVE_MPI_TYPES
#include "internal.h"
#include "command.h"

#include <sched.h>
#include <stdio.h>
#include <time.h>

static int world_rank, world_size = 1;
static bool initialised_here;
/* The gradient allreduce's own communicator, so its messages never match
 * anything else frost sends. */
static MPI_Comm gradient_comm = MPI_COMM_NULL;
static double timeout_s = FR_DEFAULT_COMM_TIMEOUT_S;
/* The machine this rank runs on: the lowest world rank on the same kernel
 * (machine_survey), and how many ranks' CPU masks overlap this one's there,
 * over how many CPUs. */
static int machine_leader;
static int machine_sharing = 1, machine_cpus = 1;

static int allgather(const void *mine, void *all, int count, MPI_Datatype type, MPI_Comm comm,
                     const char *what, fr_error *err);

/* What says which machine a rank runs on: the kernel's boot id, which ranks
 * in different network namespaces or containers of one host share (and so
 * share its CPUs) while every other machine has its own; the host name where
 * it cannot be read. */
typedef struct machine_id {
    char boot[64];
    cpu_set_t mask;
} machine_id;

static void read_machine_id(machine_id *id) {
    memset(id, 0, sizeof *id);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f || !fgets(id->boot, sizeof id->boot, f)) {
        strcpy(id->boot, "host:");
        gethostname(id->boot + 5, sizeof id->boot - 6);
    }
    if (f)
        fclose(f);
    id->boot[strcspn(id->boot, "\n")] = '\0';
    if (sched_getaffinity(0, sizeof id->mask, &id->mask) != 0)
        CPU_ZERO(&id->mask);
}

/*
 * Which ranks share this rank's machine, and its CPUs.  MPI's idea of a node
 * (MPI_COMM_TYPE_SHARED) follows the host names mpirun was given, so ranks
 * that mpirun starts in network namespaces of one machine (bench/cluster.sh)
 * would each count as a node of their own although they take turns on the
 * same cores.  Collective, once, at init.
 */
static int machine_survey(fr_error *err) {
    machine_id mine;
    read_machine_id(&mine);
    machine_leader = world_rank;
    machine_sharing = 1;
    machine_cpus = CPU_COUNT(&mine.mask) > 0 ? CPU_COUNT(&mine.mask) : 1;
    if (world_size == 1)
        return FR_OK;
    machine_id *all = malloc((size_t)world_size * sizeof *all);
    if (!all)
        return fr_fail(err, FR_ENOMEM, "out of memory comparing the ranks' machines");
    int rc = allgather(&mine, all, (int)sizeof mine, MPI_BYTE, MPI_COMM_WORLD,
                       "comparing the ranks' machines", err);
    if (rc == FR_OK) {
        cpu_set_t shared;
        CPU_ZERO(&shared);
        machine_sharing = 0;
        for (int r = world_size - 1; r >= 0; r--) {
            if (strcmp(all[r].boot, mine.boot) != 0)
                continue;
            machine_leader = r;
            cpu_set_t overlap;
            CPU_AND(&overlap, &all[r].mask, &mine.mask);
            if (CPU_COUNT(&overlap) > 0 || CPU_COUNT(&mine.mask) == 0) {
                machine_sharing++;
                CPU_OR(&shared, &shared, &all[r].mask);
            }
        }
        machine_cpus = CPU_COUNT(&shared) > 0 ? CPU_COUNT(&shared) : 1;
    }
    free(all);
    return rc;
}

bool fr_comm_thread_may_be_realtime(int *sharing, int *cpus) {
    *sharing = machine_sharing;
    *cpus = machine_cpus;
    return machine_sharing <= machine_cpus;
}

int fr_comm_init(int *argc, char ***argv, fr_error *err) {
    int already = 0, provided = 0;
    MPI_Initialized(&already);
    if (!already) {
        /* Only one thread calls MPI at a time: the caller's, or during a
         * step frost's communication thread (allreduce.c). */
        if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
            return fr_fail(err, FR_ECOMM, "MPI_Init_thread failed");
        initialised_here = true;
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED)
        return fr_fail(err, FR_ECOMM,
                       "this MPI gives thread level %d; frost's communication thread needs "
                       "MPI_THREAD_SERIALIZED (%d) or more", provided, MPI_THREAD_SERIALIZED);
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    if (MPI_Comm_dup(MPI_COMM_WORLD, &gradient_comm) != MPI_SUCCESS)
        return fr_fail(err, FR_ECOMM, "MPI_Comm_dup failed");
    int rc = machine_survey(err);
    if (rc != FR_OK)
        return rc;
    return fr_allreduce_start(err);
}

void fr_comm_finalize(void) {
    fr_allreduce_shutdown();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && gradient_comm != MPI_COMM_NULL)
        MPI_Comm_free(&gradient_comm);
    if (initialised_here && !finalized)
        MPI_Finalize();
    initialised_here = false;
}

/* Not MPI_Abort: it waits until the launcher has reached every node, which
 * never happens when a node's link is down.  A rank that exits without
 * MPI_Finalize makes mpirun (and srun) end the others. */
void fr_comm_abort(int exit_code) {
    fflush(NULL);
    _exit(exit_code);
}

bool fr_comm_have_mpi(void) { return true; }
int fr_comm_rank(void) { return world_rank; }
int fr_comm_size(void) { return world_size; }
MPI_Comm fr_comm_gradients(void) { return gradient_comm; }
void fr_comm_set_timeout(double seconds) {
    timeout_s = seconds > 0 ? seconds : FR_DEFAULT_COMM_TIMEOUT_S;
}

static int mpi_failed(fr_error *err, const char *what, int code) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(code, text, &len);
    return fr_fail(err, FR_ECOMM, "%s failed: %s", what, text);
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/*
 * Wait for a request by polling it.  Open MPI moves data over TCP only inside
 * MPI calls, so the waiter keeps calling; after spinning for spin_s (20 us
 * in fr_comm_wait: a long transfer needs no faster polling) it sleeps
 * between calls, 50 us at first and twice as long each time up to 200 us
 * (the sockets' buffers keep the link busy meanwhile), so a waiting thread
 * leaves the cores to the threads computing.  A request that has not
 * completed after the timeout means a rank or its link is gone.
 */
int fr_comm_wait(MPI_Request *request, const char *what, int peer, fr_error *err) {
    return fr_comm_wait_spinning(request, what, peer, 20e-6, err);
}

int fr_comm_wait_spinning(MPI_Request *request, const char *what, int peer, double spin_s,
                          fr_error *err) {
    const long first_pause_ns = 50000, longest_pause_ns = 200000;
    struct timespec pause = {0, first_pause_ns};
    double start = seconds_now();
    for (long polls = 0;; polls++) {
        int done = 0;
        int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS)
            return mpi_failed(err, what, rc);
        if (done)
            return FR_OK;
        double waited = seconds_now() - start;
        if (waited < spin_s)
            continue;
        if (waited > timeout_s) {
            if (peer >= 0)
                return fr_fail(err, FR_ECOMMLOST,
                               "rank %d: %s stalled: nothing from rank %d for %.0f s (a rank or "
                               "its network link is down?)", world_rank, what, peer, timeout_s);
            return fr_fail(err, FR_ECOMMLOST,
                           "rank %d: %s stalled: the other ranks did not answer for %.0f s (a "
                           "rank or its network link is down?)", world_rank, what, timeout_s);
        }
        nanosleep(&pause, NULL);
        if (pause.tv_nsec < longest_pause_ns)
            pause.tv_nsec = pause.tv_nsec * 2 < longest_pause_ns ? pause.tv_nsec * 2 : longest_pause_ns;
    }
}

/* A collective started nonblocking and waited for with the timeout. */
static int finish_collective(int rc, MPI_Request *request, const char *what, fr_error *err) {
    if (rc != MPI_SUCCESS)
        return mpi_failed(err, what, rc);
    return fr_comm_wait(request, what, -1, err);
}

static int allreduce(void *buf, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm,
                     const char *what, fr_error *err) {
    fr_allreduce_quiesce();
    MPI_Request request;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, count, type, op, comm, &request);
    return finish_collective(rc, &request, what, err);
}

static int broadcast(void *buf, int count, MPI_Datatype type, int root, const char *what,
                     fr_error *err) {
    fr_allreduce_quiesce();
    MPI_Request request;
    int rc = MPI_Ibcast(buf, count, type, root, MPI_COMM_WORLD, &request);
    return finish_collective(rc, &request, what, err);
}

static int allgather(const void *mine, void *all, int count, MPI_Datatype type, MPI_Comm comm,
                     const char *what, fr_error *err) {
    fr_allreduce_quiesce();
    MPI_Request request;
    int rc = MPI_Iallgather(mine, count, type, all, count, type, comm, &request);
    return finish_collective(rc, &request, what, err);
}

int fr_comm_barrier(fr_error *err) {
    if (world_size == 1)
        return FR_OK;
    fr_allreduce_quiesce();
    MPI_Request request;
    int rc = MPI_Ibarrier(MPI_COMM_WORLD, &request);
    return finish_collective(rc, &request, "MPI_Ibarrier", err);
}

int fr_comm_agree(int status, fr_error *err) {
    if (world_size == 1)
        return status;
    int mine = status != FR_OK ? world_rank : world_size, first_failed = mine;
    fr_error local = {0};
    int rc = allreduce(&first_failed, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD,
                       "agreeing on the status", &local);
    if (rc != FR_OK) {
        if (err)
            *err = local;
        return rc;
    }
    if (first_failed == world_size)
        return FR_OK;
    fr_error shared = {0};
    if (world_rank == first_failed && err)
        shared = *err;
    shared.status = world_rank == first_failed ? status : 0;
    rc = broadcast(&shared, (int)sizeof shared, MPI_BYTE, first_failed, "sharing an error", &local);
    if (rc != FR_OK) {
        if (err)
            *err = local;
        return rc;
    }
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
    int rc = allgather(&value, all, 1, MPI_UINT64_T, MPI_COMM_WORLD, "MPI_Iallgather", err);
    if (rc != FR_OK) {
        free(all);
        return rc;
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
    fr_allreduce_quiesce();
    MPI_Comm node;
    int rc = MPI_Comm_split(MPI_COMM_WORLD, machine_leader, world_rank, &node);
    if (rc != MPI_SUCCESS)
        return mpi_failed(err, "MPI_Comm_split", rc);
    int node_rank = 0, node_size = 1, any_failed = 0;
    MPI_Comm_rank(node, &node_rank);
    MPI_Comm_size(node, &node_size);
    unsigned char *all = malloc(len * (size_t)node_size);
    /* Every rank of the node must reach the same collectives, so an
     * allocation failure is agreed on before the gather. */
    any_failed = all == NULL;
    rc = allreduce(&any_failed, 1, MPI_INT, MPI_MAX, node, "MPI_Iallreduce", err);
    if (rc == FR_OK && !any_failed)
        rc = allgather(key, all, (int)len, MPI_BYTE, node, "MPI_Iallgather", err);
    MPI_Comm_free(&node);
    if (rc == FR_OK && !any_failed)
        for (int r = 0; r < node_size; r++)
            if (memcmp(all + (size_t)r * len, key, len) == 0) {
                if (r < node_rank)
                    (*index)++;
                if (r != node_rank)
                    (*count)++;
            }
    free(all);
    if (rc != FR_OK)
        return rc;
    if (any_failed)
        return fr_fail(err, FR_ENOMEM, "out of memory comparing the ranks of a node");
    return FR_OK;
}

/* Sums of a few doubles (the loss totals, the per-step "stop?" question) go
 * through the communication thread's exchange with every rank: one network
 * latency, where Open MPI's nonblocking allreduce took several. */
int fr_comm_allreduce_doubles(double *buf, int count, fr_error *err) {
    if (world_size == 1)
        return FR_OK;
    return fr_comm_sum_doubles(buf, count, err);
}

bool fr_comm_any(bool flag) {
    if (world_size == 1)
        return flag;
    double any = flag ? 1.0 : 0.0;
    fr_error err = {0};
    if (fr_comm_allreduce_doubles(&any, 1, &err) != FR_OK) {
        /* No status to return: a rank that cannot reach the others ends. */
        fprintf(stderr, "frost: %s\n", err.msg);
        fr_comm_abort(1);
    }
    return any > 0.0;
}

int fr_comm_broadcast_floats(float *buf, size_t count, fr_error *err) {
    if (world_size == 1)
        return FR_OK;
    const size_t piece = (size_t)1 << 30;
    for (size_t done = 0; done < count; done += piece) {
        int n = (int)(count - done < piece ? count - done : piece);
        int rc = broadcast(buf + done, n, MPI_FLOAT, 0, "MPI_Ibcast", err);
        if (rc != FR_OK)
            return rc;
    }
    return FR_OK;
}

int fr_comm_gather_bytes(const void *mine, size_t length, char **all, size_t *all_length,
                         fr_error *err) {
    *all = NULL;
    *all_length = 0;
    if (length > INT_MAX)
        return fr_fail(err, FR_EINVAL, "%zu bytes are too many to gather", length);
    int my_length = (int)length;
    int *lengths = world_rank == 0 ? calloc((size_t)world_size, sizeof(int)) : NULL;
    int *offsets = world_rank == 0 ? calloc((size_t)world_size, sizeof(int)) : NULL;
    int local = world_rank != 0 || (lengths && offsets) ? FR_OK
                : fr_fail(err, FR_ENOMEM, "out of memory gathering from the ranks");
    int rc = fr_comm_agree(local, err);
    MPI_Request request;
    if (rc == FR_OK)
        rc = finish_collective(MPI_Igather(&my_length, 1, MPI_INT, lengths, 1, MPI_INT, 0,
                                           MPI_COMM_WORLD, &request),
                               &request, "MPI_Igather", err);
    size_t total = 0;
    if (rc == FR_OK && world_rank == 0) {
        for (int r = 0; r < world_size; r++) {
            offsets[r] = (int)total;
            total += (size_t)lengths[r];
        }
        local = total <= INT_MAX && (*all = malloc(total + 1)) != NULL
                    ? FR_OK
                    : fr_fail(err, FR_ENOMEM, "cannot gather %zu bytes from the ranks", total);
    }
    if (rc == FR_OK)
        rc = fr_comm_agree(local, err);
    if (rc == FR_OK)
        rc = finish_collective(MPI_Igatherv(mine, my_length, MPI_BYTE, *all, lengths, offsets,
                                            MPI_BYTE, 0, MPI_COMM_WORLD, &request),
                               &request, "MPI_Igatherv", err);
    free(lengths);
    free(offsets);
    if (rc != FR_OK) {
        free(*all);
        *all = NULL;
        return rc;
    }
    *all_length = total;
    return FR_OK;
}

#else /* a single process */
#include "internal.h"

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
                       "this frost was built without MPI but was started as %d ranks; rebuild "
                       "it with Open MPI or run one process",
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
int fr_comm_allreduce_doubles(double *buf, int count, fr_error *err) {
    (void)buf;
    (void)count;
    (void)err;
    return FR_OK;
}
void fr_comm_abort(int exit_code) {
    fflush(NULL);
    _exit(exit_code);
}
void fr_comm_set_timeout(double seconds) { (void)seconds; }
int fr_comm_barrier(fr_error *err) {
    (void)err;
    return FR_OK;
}
int fr_comm_gather_bytes(const void *mine, size_t length, char **all, size_t *all_length,
                         fr_error *err) {
    *all_length = 0;
    if (!(*all = malloc(length + 1)))
        return fr_fail(err, FR_ENOMEM, "out of memory");
    memcpy(*all, mine, length);
    *all_length = length;
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
                          config->beta1, config->beta2, config->eps, config->bucket_mb,
                          config->grad_dtype, config->clip_grad_norm,
                          config->lr_schedule.kind, config->lr_schedule.step_size,
                          config->lr_schedule.gamma, config->lr_schedule.t_max,
                          config->lr_schedule.eta_min, config->lr_schedule.warmup_steps};
    hyper = fr_hash_bytes(hyper, optimizer, sizeof optimizer);
    hyper = fr_hash_bytes(hyper, settings, sizeof(double) * (size_t)setting_count);
    int rc = fr_comm_check_same(shapes, "the model (parameter names and shapes)", err);
    if (rc == FR_OK)
        rc = fr_comm_check_same(frozen, "the frozen set (which parameters require gradients)", err);
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
