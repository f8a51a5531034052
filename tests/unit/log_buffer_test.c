/*
 * tests/unit/log_buffer_test.c - a loop thread's held log lines
 * (core/base/log.c, log_buffer): info lines wait for the loop's next
 * iteration, a warning takes them out at once, a full hold is written
 * before it overflows, log_unbuffer writes the rest and leaves the loop
 * closable, and every line stays whole and in order.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/base/base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[256];

static size_t file_lines(void)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = 0;
    int c, last = '\n';
    while ((c = fgetc(f)) != EOF) {
        if (c == '\n')
            n++;
        last = c;
    }
    fclose(f);
    assert_int_equal(last, '\n'); /* never a cut line */
    return n;
}

static void noop_cb(uv_timer_t *t)
{
    (void)t;
}

static void test_held_until_the_loop_iterates(void **state)
{
    (void)state;
    snprintf(path, sizeof(path), "/tmp/log_buffer_test.%d", (int)getpid());
    unlink(path);
    assert_int_equal(log_init(LOG_INFO, path), 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_timer_t keep; /* keeps the loop alive for UV_RUN_NOWAIT */
    uv_timer_init(&loop, &keep);
    uv_timer_start(&keep, noop_cb, 100000, 0);
    log_buffer(&loop);

    log_info("one %d", 1);
    log_info("two");
    assert_int_equal(file_lines(), 0); /* held */
    uv_run(&loop, UV_RUN_NOWAIT);      /* the prepare handle writes them */
    assert_int_equal(file_lines(), 2);

    log_info("three");
    log_warn("four"); /* a warning: written at once, after what was held */
    assert_int_equal(file_lines(), 4);

    /* a full hold (PIPE_BUF) is written before a line would not fit */
    for (int i = 0; i < 100; i++)
        log_info("filler %03d %s", i, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    size_t mid = file_lines();
    assert_true(mid > 4 && mid < 104);

    log_info("last");
    log_unbuffer(&loop);
    assert_int_equal(file_lines(), 105);
    log_info("after"); /* unbuffered again */
    assert_int_equal(file_lines(), 106);

    uv_close((uv_handle_t *)&keep, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);

    /* in order: one two three four filler... last after */
    FILE *f = fopen(path, "r");
    char line[2048];
    const char *want[] = {"] one 1", "] two", "] three", "] four", "] filler 000"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_non_null(fgets(line, sizeof(line), f));
        assert_non_null(strstr(line, want[i]));
    }
    int k = 1;
    while (fgets(line, sizeof(line), f) != NULL && strstr(line, "] filler") != NULL) {
        char num[16];
        snprintf(num, sizeof(num), "%03d", k++);
        assert_non_null(strstr(line, num));
    }
    assert_int_equal(k, 100);
    assert_non_null(strstr(line, "] last"));
    assert_non_null(fgets(line, sizeof(line), f));
    assert_non_null(strstr(line, "] after"));
    fclose(f);
    log_init(LOG_INFO, NULL);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_held_until_the_loop_iterates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
