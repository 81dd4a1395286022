// A node:test reporter that prints, per top-level test, the lines scripts/test counts
// (cmocka's): "[ RUN      ] name" then "[       OK ] name", "[  FAILED  ] name" or
// "[  SKIPPED ] name", the name with its spaces made underscores and last on its line. A test file that failed
// outside any test is reported as a failed test named after the file.
import path from 'node:path';

function label(data) {
  const n = data.file && data.name === data.file ? 'file:' + path.basename(data.file) : data.name;
  return String(n).replace(/\s+/g, '_');
}

function details(err) {
  if (!err) return '';
  const e = err.cause || err;
  const text = (e && (e.stack || e.message)) || String(e);
  return text.split('\n').map((l) => '    ' + l).join('\n') + '\n';
}

export default async function* reporter(source) {
  for await (const ev of source) {
    const d = ev.data || {};
    switch (ev.type) {
      case 'test:stdout':
      case 'test:stderr':
        yield d.message;
        break;
      case 'test:diagnostic':
        if (d.nesting > 0 || !/^(tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) /.test(d.message))
          yield `# ${d.message}\n`;
        break;
      case 'test:pass':
        if (d.nesting === 0) {
          const n = label(d);
          yield `[ RUN      ] ${n}\n`;
          if (d.skip !== undefined && d.skip !== false)
            yield `skipped: ${typeof d.skip === 'string' ? d.skip : ''}\n[  SKIPPED ] ${n}\n`;
          else
            yield `(${Math.round(d.details?.duration_ms ?? 0)} ms)\n[       OK ] ${n}\n`;
        }
        break;
      case 'test:fail':
        if (d.nesting === 0) {
          const n = label(d);
          yield `[ RUN      ] ${n}\n${details(d.details?.error)}[  FAILED  ] ${n}\n`;
        } else {
          yield `  subtest ${d.name} failed:\n${details(d.details?.error)}`;
        }
        break;
      default:
        break;
    }
  }
}
