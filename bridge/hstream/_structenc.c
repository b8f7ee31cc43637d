/* Compiled encoder of google.protobuf.Struct: the fast path of bridge/hstream/structenc.py.
 *
 * encode(value: dict, max_depth: int) -> bytes writes a JSON object (as a JSON parser returns it:
 * dict with str keys, list, str, int, float, bool, None) as a serialized Struct, byte for byte
 * what protobuf's upb backend writes with SerializeToString(deterministic=True). Map entries
 * follow upb's deterministic order: keys compared as UTF-8 bytes, and when one key is a prefix of
 * the other, the longer one first. structenc.py is the pure-Python twin; both are property-tested
 * against protobuf (tests/hstream/test_structenc.py).
 *
 * Errors: ValueError for nesting deeper than max_depth (a node max_depth + 1 edges below the top
 * object) and for strings that are not valid Unicode (lone surrogates: UnicodeEncodeError),
 * OverflowError for an int beyond a double, TypeError for any other type.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char stack[2048];
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    char *data;
    if (b->data == b->stack) {
        data = PyMem_Malloc((size_t)cap);
        if (data != NULL) {
            memcpy(data, b->stack, (size_t)b->len);
        }
    } else {
        data = PyMem_Realloc(b->data, (size_t)cap);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int varint_size(uint64_t n) {
    int size = 1;
    while (n > 0x7F) {
        n >>= 7;
        size++;
    }
    return size;
}

static inline char *put_varint(char *p, uint64_t n) {
    while (n > 0x7F) {
        *p++ = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    *p++ = (char)n;
    return p;
}

/* Writes tag and a one-byte length placeholder; returns where the content starts. */
static inline Py_ssize_t open_len(Buf *b, char tag) {
    b->data[b->len++] = tag;
    b->len++;
    return b->len;
}

/* Fills in the length of the content that began at `start`, moving it when the varint is longer
 * than the one byte reserved. */
static int close_len(Buf *b, Py_ssize_t start) {
    Py_ssize_t n = b->len - start;
    if (n < 0x80) {
        b->data[start - 1] = (char)n;
        return 0;
    }
    int size = varint_size((uint64_t)n);
    if (buf_reserve(b, size - 1) < 0) {
        return -1;
    }
    memmove(b->data + start + size - 1, b->data + start, (size_t)n);
    put_varint(b->data + start - 1, (uint64_t)n);
    b->len += size - 1;
    return 0;
}

static int put_bytes(Buf *b, char tag, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, 1 + 10 + n) < 0) {
        return -1;
    }
    char *p = b->data + b->len;
    *p++ = tag;
    p = put_varint(p, (uint64_t)n);
    memcpy(p, s, (size_t)n);
    b->len = (p - b->data) + n;
    return 0;
}

typedef struct {
    const char *key;
    Py_ssize_t size;
    PyObject *value;
} Entry;

/* upb's deterministic order of string map keys (map_sorter.c, encoded back to front). */
static inline int entry_before(const Entry *a, const Entry *b) {
    Py_ssize_t common = a->size < b->size ? a->size : b->size;
    int cmp = common ? memcmp(a->key, b->key, (size_t)common) : 0;
    if (cmp) {
        return cmp < 0;
    }
    return a->size > b->size;
}

static int entry_cmp(const void *a, const void *b) {
    const Entry *x = a, *y = b;
    if (entry_before(x, y)) {
        return -1;
    }
    return entry_before(y, x) ? 1 : 0;
}

static int encode_struct(Buf *b, PyObject *dict, int level, int max_depth);
static int encode_list(Buf *b, PyObject *list, int level, int max_depth);

static int too_deep(int max_depth) {
    PyErr_Format(PyExc_ValueError, "JSON payload is nested deeper than %d levels", max_depth);
    return -1;
}

/* One google.protobuf.Value's fields (without its own tag and length). */
static int encode_value(Buf *b, PyObject *v, int level, int max_depth) {
    if (level > max_depth) {
        return too_deep(max_depth);
    }
    if (buf_reserve(b, 16) < 0) {
        return -1;
    }
    if (v == Py_None) {
        b->data[b->len++] = 0x08; /* null_value = NULL_VALUE */
        b->data[b->len++] = 0x00;
        return 0;
    }
    if (PyBool_Check(v)) {
        b->data[b->len++] = 0x20; /* bool_value */
        b->data[b->len++] = v == Py_True ? 0x01 : 0x00;
        return 0;
    }
    if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) {
            return -1;
        }
        return put_bytes(b, 0x1a, s, n); /* string_value */
    }
    double d;
    if (PyFloat_Check(v)) {
        d = PyFloat_AS_DOUBLE(v);
    } else if (PyLong_Check(v)) {
        d = PyLong_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            return -1;
        }
    } else if (PyDict_Check(v)) {
        Py_ssize_t start = open_len(b, 0x2a); /* struct_value */
        if (encode_struct(b, v, level, max_depth) < 0) {
            return -1;
        }
        return close_len(b, start);
    } else if (PyList_Check(v) || PyTuple_Check(v)) {
        Py_ssize_t start = open_len(b, 0x32); /* list_value */
        if (encode_list(b, v, level, max_depth) < 0) {
            return -1;
        }
        return close_len(b, start);
    } else {
        PyErr_Format(PyExc_TypeError, "%.100s cannot be stored in a JSON record",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    b->data[b->len++] = 0x11; /* number_value: a little-endian double */
    if (PyFloat_Pack8(d, b->data + b->len, 1) < 0) {
        return -1;
    }
    b->len += 8;
    return 0;
}

/* A ListValue's fields: `values` (1), one Value per item. */
static int encode_list(Buf *b, PyObject *list, int level, int max_depth) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(list);
    PyObject **items = PySequence_Fast_ITEMS(list);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (buf_reserve(b, 2) < 0) {
            return -1;
        }
        Py_ssize_t start = open_len(b, 0x0a);
        if (encode_value(b, items[i], level + 1, max_depth) < 0) {
            return -1;
        }
        if (close_len(b, start) < 0) {
            return -1;
        }
    }
    return 0;
}

/* A Struct's fields: `fields` (1), one map entry {key (1), value (2)} per item, sorted. */
static int encode_struct(Buf *b, PyObject *dict, int level, int max_depth) {
    Py_ssize_t n = PyDict_GET_SIZE(dict);
    if (n == 0) {
        return 0;
    }
    Entry small[32];
    Entry *entries = small;
    if (n > 32) {
        entries = PyMem_Malloc(sizeof(Entry) * (size_t)n);
        if (entries == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    int rc = -1;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            PyErr_Format(PyExc_TypeError, "JSON object keys must be str, not %.100s",
                         Py_TYPE(key)->tp_name);
            goto done;
        }
        entries[i].key = PyUnicode_AsUTF8AndSize(key, &entries[i].size);
        if (entries[i].key == NULL) {
            goto done;
        }
        entries[i].value = value;
        i++;
    }
    if (n <= 16) { /* insertion sort: objects are small */
        for (Py_ssize_t j = 1; j < n; j++) {
            Entry e = entries[j];
            Py_ssize_t k = j;
            while (k > 0 && entry_before(&e, &entries[k - 1])) {
                entries[k] = entries[k - 1];
                k--;
            }
            entries[k] = e;
        }
    } else {
        qsort(entries, (size_t)n, sizeof(Entry), entry_cmp);
    }
    for (i = 0; i < n; i++) {
        if (buf_reserve(b, 2) < 0) {
            goto done;
        }
        Py_ssize_t entry = open_len(b, 0x0a);
        if (put_bytes(b, 0x0a, entries[i].key, entries[i].size) < 0 || buf_reserve(b, 2) < 0) {
            goto done;
        }
        Py_ssize_t start = open_len(b, 0x12);
        if (encode_value(b, entries[i].value, level + 1, max_depth) < 0 ||
            close_len(b, start) < 0 || close_len(b, entry) < 0) {
            goto done;
        }
    }
    rc = 0;
done:
    if (entries != small) {
        PyMem_Free(entries);
    }
    return rc;
}

static PyObject *encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode(value, max_depth) takes 2 arguments");
        return NULL;
    }
    if (!PyDict_Check(args[0])) {
        PyErr_Format(PyExc_ValueError, "JSON payload is a %.100s, not an object",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    long depth = PyLong_AsLong(args[1]);
    if (depth == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (depth < 0 || depth > 100000) {
        PyErr_SetString(PyExc_ValueError, "max_depth must be between 0 and 100000");
        return NULL;
    }
    int max_depth = (int)depth;
    Buf b;
    b.data = b.stack;
    b.len = 0;
    b.cap = sizeof(b.stack);
    PyObject *out = NULL;
    if (encode_struct(&b, args[0], 0, max_depth) == 0) {
        out = PyBytes_FromStringAndSize(b.data, b.len);
    }
    if (b.data != b.stack) {
        PyMem_Free(b.data);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(value: dict, max_depth: int) -> bytes: a JSON object as a serialized "
     "google.protobuf.Struct (upb's deterministic bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_structenc", "Compiled google.protobuf.Struct encoder.", -1, methods,
};

PyMODINIT_FUNC PyInit__structenc(void) { return PyModule_Create(&module); }
