/*
 * config/config_int.h - private to config/: the syntax tree that parse.c
 * builds and config.c walks against the schema.
 *
 * Every node keeps the line it came from so that every error can say
 * "file:line". The tree owns all its strings; cfg_tree_free() frees it.
 */
#ifndef SLUICE_CONFIG_INT_H
#define SLUICE_CONFIG_INT_H

#include "config/config.h"

typedef enum { CFG_NODE_STR = 0, CFG_NODE_LIST, CFG_NODE_SECTION } cfg_node_type_t;

typedef struct cfg_node {
    cfg_node_type_t n_type;
    char *n_key;              /* entry name (NULL for list items) */
    int n_key_line;           /* line of the key */
    char *n_str;              /* CFG_NODE_STR: the value with escapes resolved */
    bool n_quoted;            /* the value was written as a quoted string */
    int n_line;               /* line of the value, or of its '{' / '[' */
    struct cfg_node *n_child; /* LIST items or SECTION entries, in file order */
    struct cfg_node *n_next;
} cfg_node_t;

/* Parse text (len bytes, need not be NUL-terminated) into a tree whose root
 * is a SECTION. On failure returns SL_EPARSE and writes "name:line: what"
 * into err. Any thread. */
int cfg_tree_parse(const char *name, const char *text, size_t len, cfg_node_t **out, char *err,
                   size_t errlen);
/* Free a tree (NULL is fine). */
void cfg_tree_free(cfg_node_t *n);

#endif /* SLUICE_CONFIG_INT_H */
