/* mcpm tokenizer: SentencePiece BPE (tokenizer.model) in plain C11, token-for-token equal to the
 * `sentencepiece` package's SentencePieceProcessor.encode / decode (no bos/eos added, no sampling).
 *
 * Supported models: trainer_spec.model_type BPE, identity normalization (empty precompiled_charsmap),
 * with or without byte_fallback, user-defined symbols, add_dummy_prefix / remove_extra_whitespaces /
 * escape_whitespaces as stored. Anything else (nmt_nfkc, unigram, treat_whitespace_as_suffix) is refused at
 * load with a message.
 *
 * Build: gcc -std=c11 -O2 -fPIC -shared -o libmcpm_tokenizer.so mcpm_tokenizer.c
 * Threading: a loaded tokenizer is read-only; any number of threads may encode/decode with it at once.
 */
#ifndef MCPM_TOKENIZER_H
#define MCPM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MCPM_TOK_API __attribute__((visibility("default")))
#else
#define MCPM_TOK_API
#endif

typedef struct mcpm_tokenizer mcpm_tokenizer; /* opaque */

/* Reads a sentencepiece ModelProto file. Returns NULL on failure with a one-line reason in err
 * (char[err_len], always NUL-terminated when err_len > 0; err may be NULL). */
MCPM_TOK_API mcpm_tokenizer* mcpm_tokenizer_load(const char* path, char* err, size_t err_len);

/* Encodes text (uint8[len], UTF-8; need not be NUL-terminated, may contain NUL bytes) into
 * ids (int32[max_ids]). Returns the number of ids, or -1 if they would not fit in max_ids (or on
 * out-of-memory / len > 256 MiB). ids == NULL only counts (max_ids ignored). */
MCPM_TOK_API int mcpm_tokenizer_encode(const mcpm_tokenizer* tok, const char* text, size_t len, int32_t* ids,
                                       int max_ids);

/* Decodes ids (int32[n]) into out (char[out_len]) and NUL-terminates it. Returns the bytes written
 * (without the NUL; the text may itself contain NUL bytes), or -1 if an id is out of range or the text plus
 * its NUL does not fit in out_len. out == NULL only measures (out_len ignored). */
MCPM_TOK_API int mcpm_tokenizer_decode(const mcpm_tokenizer* tok, const int32_t* ids, int n, char* out,
                                       size_t out_len);

MCPM_TOK_API int mcpm_tokenizer_vocab_size(const mcpm_tokenizer* tok);

/* NUL-terminated piece string of id (owned by tok), or NULL if id is out of range.
 * *len (may be NULL) gets its byte length. */
MCPM_TOK_API const char* mcpm_tokenizer_id_to_piece(const mcpm_tokenizer* tok, int32_t id, size_t* len);

/* Id of the piece piece (uint8[len]); like sentencepiece's piece_to_id, an unknown piece gives the unk id. */
MCPM_TOK_API int32_t mcpm_tokenizer_piece_to_id(const mcpm_tokenizer* tok, const char* piece, size_t len);

/* trainer_spec ids; -1 when disabled or out of range. */
MCPM_TOK_API int32_t mcpm_tokenizer_bos_id(const mcpm_tokenizer* tok);
MCPM_TOK_API int32_t mcpm_tokenizer_eos_id(const mcpm_tokenizer* tok);
MCPM_TOK_API int32_t mcpm_tokenizer_unk_id(const mcpm_tokenizer* tok);

MCPM_TOK_API void mcpm_tokenizer_free(mcpm_tokenizer* tok);

#ifdef __cplusplus
}
#endif
#endif /* MCPM_TOKENIZER_H */
