/* test-core.c: the bitmap, the token bucket, the JSON writer and reader, the size parser. */
#include "bitmap.h"
#include "bucket.h"
#include "json.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <string.h>

static void test_bitmap(void)
{
    struct bitmap b;
    ok(bitmap_init(&b, 200) == 0, "bitmap: init 200 bits");
    ok(bitmap_count(&b) == 0 && bitmap_next_set(&b, 0) == 200, "bitmap: starts clear");
    bitmap_set_range(&b, 60, 10); /* crosses a word boundary */
    ok(bitmap_count(&b) == 10, "bitmap: set 10 across words");
    ok(!bitmap_test(&b, 59) && bitmap_test(&b, 60) && bitmap_test(&b, 69) && !bitmap_test(&b, 70),
       "bitmap: exact edges");
    ok(bitmap_next_set(&b, 0) == 60 && bitmap_next_clear(&b, 60) == 70, "bitmap: next set / clear");
    uint64_t first;
    uint64_t n = bitmap_take_run(&b, 0, 4, &first);
    ok(n == 4 && first == 60 && bitmap_count(&b) == 6, "bitmap: take a run of at most 4");
    n = bitmap_take_run(&b, 0, 100, &first);
    ok(n == 6 && first == 64 && bitmap_count(&b) == 0, "bitmap: take the rest, stops at clear bit");
    ok(bitmap_take_run(&b, 0, 100, &first) == 0, "bitmap: nothing to take");
    bitmap_set_range(&b, 190, 100); /* clipped at the end */
    ok(bitmap_count(&b) == 10 && bitmap_next_set(&b, 0) == 190, "bitmap: range clipped to nbits");
    ok(bitmap_next_set_before(&b, 0, 190) == 190 && bitmap_next_set_before(&b, 0, 191) == 190 &&
           bitmap_next_set_before(&b, 0, 100) == 100 && bitmap_next_set_before(&b, 150, 500) == 190 &&
           bitmap_next_set_before(&b, 195, 1000) == 195,
       "bitmap: next set before a limit (returns the limit, at most nbits, when none)");
    bitmap_clear_range(&b, 195, 2);
    ok(bitmap_count(&b) == 8 && !bitmap_test(&b, 195), "bitmap: clear a range");
    bitmap_set_range(&b, 0, 200);
    ok(bitmap_count(&b) == 200 && bitmap_next_clear(&b, 0) == 200, "bitmap: full");
    bitmap_free(&b);
}

static void test_bucket(void)
{
    struct bucket b;
    const uint64_t s = 1000000000ULL;
    bucket_init(&b, 0, 0);
    ok(bucket_run(&b, 1 << 30, 0) == 0, "bucket: rate 0 never waits");
    bucket_init(&b, 1000, 0);
    ok(bucket_run(&b, 500, 0) == s / 2, "bucket: 500 bytes at 1000/s from empty waits 0.5 s");
    ok(bucket_run(&b, 500, s / 2) == s / 2, "bucket: the debt was paid; the next 500 waits 0.5 s");
    ok(bucket_run(&b, 100, 10 * s) == 0, "bucket: after a pause a burst up to capacity goes at once");
    bucket_adjust(&b, 0, 10 * s);
    ok(bucket_run(&b, 1 << 30, 10 * s) == 0, "bucket: adjusted to unlimited");
    bucket_adjust(&b, 2000, 10 * s);
    ok(bucket_run(&b, 2000, 10 * s) == s, "bucket: adjusted to 2000/s: 2000 bytes wait 1 s");
}

static void test_json(void)
{
    struct json j;
    json_init(&j);
    json_obj_begin(&j, NULL);
    json_str_member(&j, "s", "a\"b\\c\n\x01");
    json_u64_member(&j, "n", 18446744073709551615ULL);
    json_bool_member(&j, "t", true);
    json_arr_begin(&j, "a");
    json_str_member(&j, NULL, "x");
    json_str_member(&j, NULL, "y");
    json_arr_end(&j);
    json_obj_end(&j);
    ok(!strcmp(json_str(&j), "{\"s\": \"a\\\"b\\\\c\\n\\u0001\", \"n\": 18446744073709551615, "
                             "\"t\": true, \"a\": [\"x\", \"y\"]}"),
       "json: escapes quotes, backslashes, control characters; nests: %s", json_str(&j));
    json_free(&j);

    struct json_request r;
    const char *why = NULL;
    ok(json_parse_request("{\"execute\": \"job-complete\", \"arguments\": {\"pivot\": true, \"x\": \"a\\\"b\"}}", &r, &why) == 0 &&
       !strcmp(r.execute, "job-complete") && !strcmp(json_request_arg(&r, "pivot"), "true") &&
       !strcmp(json_request_arg(&r, "x"), "a\"b"), "json: parse a request with arguments");
    ok(json_parse_request("  {\"execute\":\"status\"}  ", &r, &why) == 0 && !strcmp(r.execute, "status") &&
       json_request_arg(&r, "pivot") == NULL, "json: parse a bare request");
    ok(json_parse_request("{\"execute\": 1}", &r, &why) == -EINVAL, "json: execute must be a string");
    ok(json_parse_request("{}", &r, &why) == -EINVAL, "json: missing execute refused");
    ok(json_parse_request("{\"execute\": \"x\"", &r, &why) == -EINVAL, "json: truncated refused");
    ok(json_parse_request("{\"execute\": \"x\"} junk", &r, &why) == -EINVAL, "json: trailing text refused");
    ok(json_parse_request("{\"execute\": \"\\u00e9\"}", &r, &why) == -EINVAL, "json: non-ASCII escape refused");
    ok(json_parse_request("", &r, &why) == -EINVAL, "json: empty refused");
}

static void test_size(void)
{
    uint64_t v;
    ok(mi_parse_size("0", &v) == 0 && v == 0, "size: 0");
    ok(mi_parse_size("512", &v) == 0 && v == 512, "size: 512");
    ok(mi_parse_size("64K", &v) == 0 && v == 65536, "size: 64K");
    ok(mi_parse_size("1m", &v) == 0 && v == 1048576, "size: 1m");
    ok(mi_parse_size("2GiB", &v) == 0 && v == 2147483648ULL, "size: 2GiB");
    ok(mi_parse_size("3T", &v) == 0 && v == 3ULL << 40, "size: 3T");
    ok(mi_parse_size("16777215T", &v) == 0 && v == 16777215ULL << 40, "size: largest T");
    ok(mi_parse_size("16777216T", &v) == -ERANGE, "size: T overflow");
    ok(mi_parse_size("18446744073709551616", &v) == -ERANGE, "size: decimal overflow");
    ok(mi_parse_size("", &v) == -EINVAL && mi_parse_size("-1", &v) == -EINVAL &&
       mi_parse_size("1.5G", &v) == -EINVAL && mi_parse_size("12Q", &v) == -EINVAL &&
       mi_parse_size("K", &v) == -EINVAL && mi_parse_size("1KK", &v) == -EINVAL, "size: junk refused");
}

int main(void)
{
    test_bitmap();
    test_bucket();
    test_json();
    test_size();
    return tap_done();
}
