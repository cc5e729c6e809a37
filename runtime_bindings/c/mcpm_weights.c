/* weights.bin: map it read-only and validate it (header, tensor table, checksums) like
 * export/bundle/weights_file.py; the small file helpers every reader of a bundle uses. Format:
 * docs/bundle-format.md. */
#define _GNU_SOURCE /* O_CLOEXEC under -std=c11 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mcpm_model.h"

#define HEADER_BYTES 64
#define ROW_BYTES 128 /* one tensor table row: name[64], dtype u32, ndim u32, shape u64[4], offset u64, bytes u64 */

static uint32_t crc32_update(uint32_t crc, const unsigned char* p, size_t n) {
    uint32_t table[256]; /* CRC-32 (zlib polynomial), built per call: used only at load */
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static uint32_t rd32(const unsigned char* p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const unsigned char* p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Maps path into m->map / m->map_size. */
static int map_file(mcpm_model* m, const char* path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mcpm_seterr(m->err, "%s is missing: re-export the bundle", path);
    struct stat st;
    if (fstat(fd, &st) || st.st_size < HEADER_BYTES) {
        close(fd);
        return mcpm_seterr(m->err, "%s is truncated (%lld bytes): re-export or re-copy the bundle", path,
                           (long long)st.st_size);
    }
    m->map_size = (size_t)st.st_size;
    m->map = mmap(NULL, m->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m->map == MAP_FAILED) { m->map = NULL; return mcpm_seterr(m->err, "%s: mmap failed", path); }
    return 0;
}

/* One tensor table row r (uint8[ROW_BYTES]) into e; data_bytes: size of the data section. */
static int read_row(mcpm_model* m, const char* path, const unsigned char* r, uint64_t data_bytes, mcpm_wentry* e) {
    static const int code_to_dtype[6] = {0, 1, 5, 6, 4, 7}; /* weights.bin code -> MCPM_DTYPES index */
    memcpy(e->name, r, 64);
    e->name[64] = '\0';
    uint32_t code = rd32(r + 64), ndim = rd32(r + 68);
    int bad = code > 5 || ndim > 4;
    uint64_t expected = 1;
    for (uint32_t d = 0; !bad && d < ndim; d++) {
        e->shape[d] = (int64_t)rd64(r + 72 + 8 * d);
        if (e->shape[d] < 0 || (e->shape[d] && expected > UINT64_MAX / (uint64_t)e->shape[d])) bad = 1;
        else expected *= (uint64_t)e->shape[d];
    }
    if (bad) return mcpm_seterr(m->err, "%s: tensor '%s' has a corrupted entry: re-export the bundle", path, e->name);
    e->dtype = code_to_dtype[code];
    e->ndim = (int)ndim;
    e->offset = rd64(r + 104);
    e->bytes = rd64(r + 112);
    if (e->offset % MCPM_ALIGN || e->bytes != expected * (uint64_t)MCPM_DTYPES[e->dtype].bytes ||
        e->offset > data_bytes || e->bytes > data_bytes - e->offset)
        return mcpm_seterr(m->err, "%s: tensor '%s' lies outside the file or is misaligned: re-export", path, e->name);
    return 0;
}

int mcpm_weights_open(mcpm_model* m, const char* path, int verify, mcpm_wentry** entries, uint32_t* count,
                      const unsigned char** data) {
    if (map_file(m, path)) return -1;
    const unsigned char* b = m->map; /* uint8[map_size] */
    if (memcmp(b, "MCPMWGT1", 8))
        return mcpm_seterr(m->err, "%s is not an mcpm weights file (bad magic): re-export the bundle", path);
    uint32_t version = rd32(b + 8), n = rd32(b + 12);
    uint64_t table_offset = rd64(b + 16), data_offset = rd64(b + 24), data_bytes = rd64(b + 32);
    uint32_t table_crc = rd32(b + 40), data_crc = rd32(b + 44);
    if (version != 1)
        return mcpm_seterr(m->err, "%s has weights format version %u, this mcpm reads 1: re-export the bundle", path,
                           version);
    if (table_offset != HEADER_BYTES || data_offset < HEADER_BYTES + (uint64_t)n * ROW_BYTES ||
        data_offset % MCPM_ALIGN)
        return mcpm_seterr(m->err, "%s has a corrupted header: re-export the bundle", path);
    if (data_offset > m->map_size || data_bytes > m->map_size - data_offset)
        return mcpm_seterr(m->err, "%s is truncated (%zu of %llu bytes): re-copy it", path, m->map_size,
                           (unsigned long long)(data_offset + data_bytes));
    if (crc32_update(0, b + HEADER_BYTES, (size_t)n * ROW_BYTES) != table_crc)
        return mcpm_seterr(m->err, "%s: tensor table checksum mismatch: the file is corrupted, re-copy it", path);
    if (verify && crc32_update(0, b + data_offset, data_bytes) != data_crc)
        return mcpm_seterr(m->err, "%s: data checksum mismatch: the file is corrupted, re-copy it", path);
    mcpm_wentry* es = calloc(n ? n : 1, sizeof(mcpm_wentry)); /* mcpm_wentry[n] */
    if (!es) return mcpm_seterr(m->err, "out of memory");
    for (uint32_t i = 0; i < n; i++)
        if (read_row(m, path, b + HEADER_BYTES + (size_t)i * ROW_BYTES, data_bytes, &es[i])) {
            free(es);
            return -1;
        }
    *entries = es;
    *count = n;
    *data = b + data_offset;
    return 0;
}

/* ---------------------------------------------------------------- bundle file helpers (mcpm_internal.h) */

int mcpm_plain_file_name(const char* name) {
    if (!name || !name[0] || !strcmp(name, ".") || !strcmp(name, "..")) return 0;
    for (const char* c = name; *c; c++)
        if (*c == '/' || *c == '\\' || (unsigned char)*c < 0x20) return 0;
    return 1;
}

char* mcpm_read_file(const char* path, size_t* len) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    char* buf = NULL;
    if (!fseek(f, 0, SEEK_END)) {
        long size = ftell(f);
        if (size >= 0 && !fseek(f, 0, SEEK_SET) && (buf = malloc((size_t)size + 1))) {
            if (fread(buf, 1, (size_t)size, f) != (size_t)size) { free(buf); buf = NULL; }
            else { buf[size] = '\0'; *len = (size_t)size; }
        }
    }
    fclose(f);
    return buf;
}
