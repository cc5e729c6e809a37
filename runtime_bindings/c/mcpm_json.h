/* Minimal JSON parser (RFC 8259 subset sufficient for plan.json): parse into a flat node array. */
#ifndef MCPM_JSON_H
#define MCPM_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_node {
    json_type type;
    int is_int;        /* number written without fraction/exponent and fits int64 */
    int64_t i;         /* JSON_NUMBER (if is_int), JSON_BOOL (0/1) */
    double d;          /* JSON_NUMBER */
    const char* str;   /* JSON_STRING: unescaped, NUL-terminated (points into json_doc.text) */
    const char* key;   /* member name when the parent is an object, else NULL */
    int count;         /* JSON_ARRAY / JSON_OBJECT: number of children */
    int first;         /* index of the first child or -1 */
    int next;          /* index of the next sibling or -1 */
} json_node;

typedef struct json_doc {
    char* text;        /* owned copy of the input, strings are unescaped in place: char[len + 1] */
    json_node* nodes;  /* json_node[n_nodes]; nodes[0] is the root */
    int n_nodes;
    int cap;
} json_doc;

/* 0 on success; on failure -1 and a message in err[errlen]. */
int json_parse(json_doc* doc, const char* text, size_t len, char* err, size_t errlen);
void json_free(json_doc* doc);

/* Helpers (NULL / defaults when absent or of another type). */
const json_node* json_get(const json_doc* doc, const json_node* obj, const char* key);
const json_node* json_at(const json_doc* doc, const json_node* arr, int index);
const json_node* json_child(const json_doc* doc, const json_node* n); /* first child */
const json_node* json_next(const json_doc* doc, const json_node* n);  /* next sibling */

#endif
