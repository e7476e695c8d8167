/*
 * proxy_wasm.h: write Meshwork (and Envoy) HTTP filters in C, on the proxy-wasm ABI v0.2.1.
 *
 * Build a filter as a WASI reactor with clang and wasi-libc (Debian: clang lld wasi-libc):
 *
 *   clang --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 \
 *         -I plugin-sdk/c -o my_filter.wasm my_filter.c
 *
 * The header declares every host function (imported from module "env") and the ABI's enums, and exports the ABI
 * version marker and the allocator the host uses to hand data to the filter. A filter then exports the callbacks
 * it needs with PROXY_WASM_EXPORT, e.g.
 *
 *   PROXY_WASM_EXPORT(proxy_on_request_headers)
 *   int32_t proxy_on_request_headers(uint32_t context_id, uint32_t headers, uint32_t end_of_stream) { ... }
 *
 * Memory the host returns (header values, buffers) is allocated with malloc inside the filter: free it.
 */
#ifndef MESHWORK_PROXY_WASM_H
#define MESHWORK_PROXY_WASM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PROXY_WASM_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define PROXY_WASM_EXPORT(name) __attribute__((export_name(#name)))

typedef enum {
  PROXY_OK = 0, PROXY_NOT_FOUND = 1, PROXY_BAD_ARGUMENT = 2, PROXY_SERIALIZATION_FAILURE = 3, PROXY_PARSE_FAILURE = 4,
  PROXY_INVALID_MEMORY_ACCESS = 6, PROXY_EMPTY = 7, PROXY_CAS_MISMATCH = 8, PROXY_INTERNAL_FAILURE = 10,
  PROXY_UNIMPLEMENTED = 12
} proxy_status_t;

typedef enum { PROXY_LOG_TRACE, PROXY_LOG_DEBUG, PROXY_LOG_INFO, PROXY_LOG_WARN, PROXY_LOG_ERROR, PROXY_LOG_CRITICAL } proxy_log_level_t;
typedef enum { PROXY_CONTINUE = 0, PROXY_PAUSE = 1 } proxy_action_t;
typedef enum {
  PROXY_MAP_REQUEST_HEADERS = 0, PROXY_MAP_REQUEST_TRAILERS = 1, PROXY_MAP_RESPONSE_HEADERS = 2, PROXY_MAP_RESPONSE_TRAILERS = 3
} proxy_map_type_t;
typedef enum {
  PROXY_BUFFER_REQUEST_BODY = 0, PROXY_BUFFER_RESPONSE_BODY = 1, PROXY_BUFFER_VM_CONFIGURATION = 6,
  PROXY_BUFFER_PLUGIN_CONFIGURATION = 7
} proxy_buffer_type_t;

/* Host functions (ABI v0.2.1). Pointers and lengths are checked by the host against the filter's memory. */
PROXY_WASM_IMPORT(proxy_log) proxy_status_t proxy_log(proxy_log_level_t level, const char *msg, size_t len);
PROXY_WASM_IMPORT(proxy_get_buffer_bytes) proxy_status_t proxy_get_buffer_bytes(proxy_buffer_type_t type, size_t start, size_t max_size, const char **ptr, size_t *len);
PROXY_WASM_IMPORT(proxy_get_header_map_value) proxy_status_t proxy_get_header_map_value(proxy_map_type_t type, const char *key, size_t key_len, const char **value, size_t *value_len);
PROXY_WASM_IMPORT(proxy_add_header_map_value) proxy_status_t proxy_add_header_map_value(proxy_map_type_t type, const char *key, size_t key_len, const char *value, size_t value_len);
PROXY_WASM_IMPORT(proxy_replace_header_map_value) proxy_status_t proxy_replace_header_map_value(proxy_map_type_t type, const char *key, size_t key_len, const char *value, size_t value_len);
PROXY_WASM_IMPORT(proxy_remove_header_map_value) proxy_status_t proxy_remove_header_map_value(proxy_map_type_t type, const char *key, size_t key_len);
PROXY_WASM_IMPORT(proxy_get_header_map_pairs) proxy_status_t proxy_get_header_map_pairs(proxy_map_type_t type, const char **ptr, size_t *len);
PROXY_WASM_IMPORT(proxy_set_header_map_pairs) proxy_status_t proxy_set_header_map_pairs(proxy_map_type_t type, const char *ptr, size_t len);
PROXY_WASM_IMPORT(proxy_send_local_response) proxy_status_t proxy_send_local_response(uint32_t status, const char *details, size_t details_len, const char *body, size_t body_len, const char *headers, size_t headers_len, int32_t grpc_status);
PROXY_WASM_IMPORT(proxy_get_property) proxy_status_t proxy_get_property(const char *path, size_t path_len, const char **value, size_t *value_len);
PROXY_WASM_IMPORT(proxy_get_shared_data) proxy_status_t proxy_get_shared_data(const char *key, size_t key_len, const char **value, size_t *value_len, uint32_t *cas);
PROXY_WASM_IMPORT(proxy_set_shared_data) proxy_status_t proxy_set_shared_data(const char *key, size_t key_len, const char *value, size_t value_len, uint32_t cas);
PROXY_WASM_IMPORT(proxy_define_metric) proxy_status_t proxy_define_metric(uint32_t type, const char *name, size_t name_len, uint32_t *metric_id);
PROXY_WASM_IMPORT(proxy_increment_metric) proxy_status_t proxy_increment_metric(uint32_t metric_id, int64_t delta);
PROXY_WASM_IMPORT(proxy_get_current_time_nanoseconds) proxy_status_t proxy_get_current_time_nanoseconds(uint64_t *nanos);

/* The ABI version this filter speaks, and the allocator the host calls to return data. */
PROXY_WASM_EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}
PROXY_WASM_EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return malloc(size); }

/* Helpers. */
static inline void proxy_log_str(proxy_log_level_t level, const char *msg) { proxy_log(level, msg, strlen(msg)); }

/* The plugin configuration (pluginConfig) as a NUL-terminated string; caller frees. NULL if there is none. */
static inline char *proxy_plugin_config(void) {
  const char *ptr = NULL;
  size_t len = 0;
  if (proxy_get_buffer_bytes(PROXY_BUFFER_PLUGIN_CONFIGURATION, 0, SIZE_MAX, &ptr, &len) != PROXY_OK || len == 0) return NULL;
  char *s = malloc(len + 1);
  memcpy(s, ptr, len);
  s[len] = 0;
  free((void *)ptr);
  return s;
}

/* Whether a request header is present (value discarded). */
static inline int proxy_has_request_header(const char *name) {
  const char *v = NULL;
  size_t n = 0;
  if (proxy_get_header_map_value(PROXY_MAP_REQUEST_HEADERS, name, strlen(name), &v, &n) != PROXY_OK) return 0;
  free((void *)v);
  return 1;
}

static inline proxy_status_t proxy_set_request_header(const char *name, const char *value) {
  return proxy_replace_header_map_value(PROXY_MAP_REQUEST_HEADERS, name, strlen(name), value, strlen(value));
}

/* A local reply with a text body and no extra headers. */
static inline proxy_status_t proxy_reply(uint32_t status, const char *body) {
  return proxy_send_local_response(status, "", 0, body, strlen(body), "", 0, -1);
}

#endif
