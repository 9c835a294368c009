/*
 * pmpi_count.c - counts the bytes a process sends with MPI point-to-point,
 * through the MPI profiling interface, independently of frost's own count.
 * LD_PRELOAD it; at MPI_Finalize each rank writes "RANK BYTES OTHER" to the
 * file named by PMPI_COUNT_FILE with ".RANK" appended: BYTES sent with tag 0
 * (frost's gradient buckets), OTHER with any other tag (its exchange of the
 * loss totals and the stop flag, tag 1).  Open MPI's collectives send below
 * this interface, so they are not counted.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static unsigned long long bytes_sent, other_bytes_sent;

static void count(int n, MPI_Datatype type, int tag) {
    int size = 0;
    PMPI_Type_size(type, &size);
    *(tag == 0 ? &bytes_sent : &other_bytes_sent) += (unsigned long long)n * (unsigned long long)size;
}

int MPI_Isend(const void *buf, int n, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
              MPI_Request *request) {
    count(n, type, tag);
    return PMPI_Isend(buf, n, type, dest, tag, comm, request);
}

int MPI_Send(const void *buf, int n, MPI_Datatype type, int dest, int tag, MPI_Comm comm) {
    count(n, type, tag);
    return PMPI_Send(buf, n, type, dest, tag, comm);
}

int MPI_Finalize(void) {
    const char *base = getenv("PMPI_COUNT_FILE");
    int rank = 0;
    PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (base) {
        char path[4096];
        snprintf(path, sizeof path, "%s.%d", base, rank);
        FILE *f = fopen(path, "w");
        if (f) {
            fprintf(f, "%d %llu %llu\n", rank, bytes_sent, other_bytes_sent);
            fclose(f);
        }
    }
    return PMPI_Finalize();
}
