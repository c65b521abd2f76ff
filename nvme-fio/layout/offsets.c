/*
 * Prints the layout facts nvme-fio's src/ffi.rs needs of fio 3.33's structures.
 *
 * Build against the fio-3.33 sources, configured as Debian's package is (Debian 12's fio
 * 3.33-3 links libaio, libnuma and zlib, the features that reach these structures):
 *
 *   git clone --branch fio-3.33 https://github.com/axboe/fio && cd fio
 *   ./configure --disable-native
 *   cc -include config-host.h -D_GNU_SOURCE -D_LARGEFILE_SOURCE -D_FILE_OFFSET_BITS=64 \
 *      -DFIO_INTERNAL -I. -o offsets /path/to/offsets.c && ./offsets
 *
 * and copy its output into src/ffi.rs (the `layout` module).
 */
#include <stdio.h>
#include <stddef.h>
#include "fio.h"
#include "ioengines.h"
#include "parse.h"
#include "optgroup.h"

#define P(name, value) printf("pub const %s: usize = %zu;\n", name, (size_t)(value))

int main(void)
{
	printf("// fio_version_string = %s, FIO_IOOPS_VERSION = %d\n", FIO_VERSION, FIO_IOOPS_VERSION);
	P("TD_SIZE", sizeof(struct thread_data));
	P("TD_O", offsetof(struct thread_data, o));
	P("TD_EO", offsetof(struct thread_data, eo));
	P("TD_THREAD_NUMBER", offsetof(struct thread_data, thread_number));
	P("TD_FILES", offsetof(struct thread_data, files));
	P("TD_FILES_INDEX", offsetof(struct thread_data, files_index));
	P("TD_ORIG_BUFFER", offsetof(struct thread_data, orig_buffer));
	P("TD_IO_OPS_DATA", offsetof(struct thread_data, io_ops_data));
	P("TD_O_NAME", offsetof(struct thread_data, o.name));
	P("TD_O_IODEPTH", offsetof(struct thread_data, o.iodepth));
	P("TD_O_USE_THREAD", offsetof(struct thread_data, o.use_thread));
	P("TD_O_SIZE", offsetof(struct thread_data, o.size));
	P("TD_O_START_OFFSET", offsetof(struct thread_data, o.start_offset));
	P("IO_U_SIZE", sizeof(struct io_u));
	P("IO_U_FILE", offsetof(struct io_u, file));
	P("IO_U_DDIR", offsetof(struct io_u, ddir));
	P("IO_U_OFFSET", offsetof(struct io_u, offset));
	P("IO_U_XFER_BUF", offsetof(struct io_u, xfer_buf));
	P("IO_U_XFER_BUFLEN", offsetof(struct io_u, xfer_buflen));
	P("IO_U_RESID", offsetof(struct io_u, resid));
	P("IO_U_ERROR", offsetof(struct io_u, error));
	P("FILE_SIZE", sizeof(struct fio_file));
	P("FILE_FILETYPE", offsetof(struct fio_file, filetype));
	P("FILE_FILE_NAME", offsetof(struct fio_file, file_name));
	P("FILE_REAL_FILE_SIZE", offsetof(struct fio_file, real_file_size));
	P("FILE_ENGINE_POS", offsetof(struct fio_file, engine_pos));
	P("FILE_FLAGS", offsetof(struct fio_file, flags));
	P("FIO_TYPE_BLOCK", FIO_TYPE_BLOCK);
	P("FIO_FILE_SIZE_KNOWN", FIO_FILE_size_known);
	P("OPS_SIZE", sizeof(struct ioengine_ops));
	P("OPS_OPTION_STRUCT_SIZE", offsetof(struct ioengine_ops, option_struct_size));
	P("OPS_OPTIONS", offsetof(struct ioengine_ops, options));
	P("OPTION_SIZE", sizeof(struct fio_option));
	P("OPTION_CATEGORY", offsetof(struct fio_option, category));
	P("OPTION_GROUP", offsetof(struct fio_option, group));
	P("OPTION_NO_FREE", offsetof(struct fio_option, no_free));
	P("OPT_INT", FIO_OPT_INT);
	P("OPT_BOOL", FIO_OPT_BOOL);
	printf("pub const OPT_C_ENGINE: u64 = %#llx;\n", (unsigned long long)FIO_OPT_C_ENGINE);
	printf("pub const OPT_G_INVALID: u64 = %#llx;\n", (unsigned long long)FIO_OPT_G_INVALID);
	return 0;
}
